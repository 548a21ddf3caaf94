"""Print protocol.masks golden vectors as JSON (run in a fresh interpreter by the mask tests)."""

import json

from dlnet.protocol.masks import golden_vectors

print(json.dumps(golden_vectors(), sort_keys=True))
