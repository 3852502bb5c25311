"""The API's routes, one module per resource; each defines ``router`` (an APIRouter under ``/v1/...``, the page
without a prefix). A route only translates HTTP to a call of the Python API (:mod:`faceaudit.api`,
:class:`faceaudit.gallery.gallery.Gallery`) and its result back, run through ``ServiceState.run``."""
