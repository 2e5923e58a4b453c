"""benchmarks/common.py: the warning of a CPU timing run without tcmalloc."""
from benchmarks import common


def test_no_warning_with_tcmalloc_preloaded():
  assert common.allocator_warning("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4") is None
  assert common.allocator_warning("/opt/a.so:/usr/lib/libtcmalloc.so.4") is None


def test_warning_names_the_preload_and_the_fix():
  for ld_preload in ("", "/usr/lib/libjemalloc.so.2"):
    message = common.allocator_warning(ld_preload)
    assert repr(ld_preload) in message
    assert "source launch/setup_env.sh" in message
