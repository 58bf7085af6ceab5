"""The Python client (httpx + numpy only): ``from service.client import Client``."""

from ._client import AsyncClient, Client, RequestRejected, RoiconvError, ServerBusy, ServerError
from ._planning import crop_rect, crop_request, filter_halo, paste_region, roi_rect
from ._upload import encode_png

__all__ = [
    "AsyncClient",
    "Client",
    "RequestRejected",
    "RoiconvError",
    "ServerBusy",
    "ServerError",
    "crop_rect",
    "crop_request",
    "encode_png",
    "filter_halo",
    "paste_region",
    "roi_rect",
]
