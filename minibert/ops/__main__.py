"""``python -m minibert.ops``: print which backend is active and why (``backend_info()`` as JSON)."""
import json

from minibert.ops import backend_info

print(json.dumps(backend_info(), indent=2))
