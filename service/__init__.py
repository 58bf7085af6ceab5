"""roiconv service: a FastAPI server that convolves images only inside a region of interest."""

__version__ = "0.1.0"

__all__ = ["__version__"]
