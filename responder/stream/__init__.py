"""The stream front: SSE streams, long-polls and client reports (`front.py`), the hub that
wakes them on every committed change (`hub.py`), and their /docs (`openapi.py`)."""
