import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ecw_harness import have, make  # noqa: E402


@pytest.fixture(scope="session")
def host_tool(tmp_path_factory) -> Path:
    """The host build of ecw_tool (gcc -O2, libzstd)."""
    if not have("gcc", "make"):
        pytest.skip("gcc/make not installed (scripts/install_toolchains.sh)")
    build = tmp_path_factory.mktemp("ecw_build")
    make("host", build)
    return build / "host" / "ecw_tool"


@pytest.fixture(scope="session")
def decoders(host_tool) -> dict[str, list[str]]:
    """Every decoder path of the host build as an ecw_tool command prefix: the reference decoder,
    the widest SIMD path this CPU runs, AVX2 at most, the scalar fast path (the one ARM runs) and
    the microcontroller build (fast paths compiled out: its own output loop)."""
    d = host_tool.parent
    return {"ref": [str(host_tool), "--ref"], "fast": [str(host_tool)], "avx2": [str(d / "ecw_tool_avx2")],
            "scalar": [str(d / "ecw_tool_scalar")], "mcu": [str(d / "ecw_tool_mcu")]}
