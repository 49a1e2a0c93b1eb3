"""Test configuration: 8 forced host devices (sharding tests) before JAX is imported; trainer runs
stay on one device (``--mesh auto`` means none) unless a test asks for a mesh."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("ZOJAX_MESH", "none")
import tempfile

os.environ.setdefault("ZOJAX_CACHE_DIR", tempfile.mkdtemp(prefix="zojax-cache-"))  # `zojax tasks`'s cache

# the trainer tests' fixtures (data_dir, xla_cache), module-scoped in each module that uses them
pytest_plugins = ["tests._trainer"]
