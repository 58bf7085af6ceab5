"""Bytes → pixels → bytes: the request spec, codecs and metadata, ROI rasterization, the filter catalog, the OpenCV
and torch engines, served networks and the pipeline that runs them. No FastAPI, no asyncio."""
