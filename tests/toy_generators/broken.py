"""A generator module that raises on import (the contract test expects the key named)."""

raise RuntimeError("this module is broken on purpose")
