"""Test configuration: 8 forced host devices (sharding tests) before JAX is imported; trainer runs
stay on one device (``--mesh auto`` means none) unless a test asks for a mesh; one persistent
compilation cache for the whole session (``compile_cache``)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("ZOJAX_MESH", "none")
# the session's compilation cache (compile_cache below) also keeps the many programs that compile in
# a tenth of a second to a second (evaluation passes, small steps), in this process and its subprocesses
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
import tempfile

os.environ.setdefault("ZOJAX_CACHE_DIR", tempfile.mkdtemp(prefix="zojax-cache-"))  # `zojax tasks`'s cache

# the trainer tests' fixtures (data_dir), module-scoped in each module that uses them
pytest_plugins = ["tests._trainer"]

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory: pytest.TempPathFactory):
    """JAX's persistent compilation cache in one folder for the session, its CLI calls and subprocesses
    (``$ZOJAX_COMPILE_CACHE``), shared by the xdist workers: a program compiled by one test (the tiny
    model's step at a given method and shape, an evaluation pass) is loaded by every later test that
    compiles it again, in any module or process. Compiling is most of the suite's time on CPU, and a
    loaded executable is the compiled one (results bit for bit, ``memory_analysis()`` included). It also
    keeps the tests out of the user's ``~/.cache/zojax/xla``."""
    from zojax.train.cache import disable_compile_cache, enable_compile_cache

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    path = enable_compile_cache(root / "xla")
    before = os.environ.get("ZOJAX_COMPILE_CACHE")
    os.environ["ZOJAX_COMPILE_CACHE"] = path
    yield path
    disable_compile_cache()
    if before is None:
        del os.environ["ZOJAX_COMPILE_CACHE"]
    else:
        os.environ["ZOJAX_COMPILE_CACHE"] = before
