"""petfast's CUDA kernels (labeller, sliding-window tiles, component statistics, fused instance norm,
B-spline prefilter and axis convolution, resampling), compiled for the host against an emulated CUDA runtime (cuda_emulation/cuda_runtime.h: one fiber per CUDA
thread, barriers and warp shuffles honoured, a thread picked at random at every atomic) and compared
with their CPU twins on random cases (cuda_emulation/check_kernels.cpp). This checks the kernels'
index arithmetic, barriers and union-find races on every machine, with a GPU or without; their speed
and a real GPU's memory model need the CUDA tests (``-m cuda``) on hardware."""
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMULATION = Path(__file__).parent / "cuda_emulation"
KERNELS = ("label", "tiles", "component_stats", "norm_act", "filters", "resample")  # csrc/{cuda,cpu}/<name>_{cuda,cpu}
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)<<<(.*?)>>>\(", re.S)  # kernel<T><<<grid, block, 0, stream>>>(

pytestmark = pytest.mark.skipif(not CXX or not (ROOT / "csrc" / "cuda").is_dir() or platform.system() != "Linux",
                                reason="needs the source tree, a C++ compiler and ucontext (Linux)")


FLAGS = ["-std=c++17", "-O1", "-DPETFAST_WITH_CUDA=1", f"-I{EMULATION}", f"-I{ROOT / 'csrc'}"]


def compile_objects(folder: Path, sources: dict) -> dict:
    """{name: object file} for {name: source}, compiled in parallel."""
    jobs = {name: (folder / f"{name}.o", subprocess.Popen([CXX, *FLAGS, "-c", str(src), "-o", str(folder / f"{name}.o")],
                                                          stderr=subprocess.PIPE, text=True))
            for name, src in sources.items()}
    for name, (_, job) in jobs.items():
        _, errors = job.communicate()  # reads stderr to the end: a long error log would fill the pipe and block wait()
        assert job.returncode == 0, f"{name}: " + errors[-4000:]
    return {name: obj for name, (obj, _) in jobs.items()}


def host_source(folder: Path, kernel: str, edit=lambda text: text) -> Path:
    """csrc/cuda/<kernel>_cuda.cu as host C++: its launches become emu::launch calls."""
    text = edit((ROOT / "csrc" / "cuda" / f"{kernel}_cuda.cu").read_text())
    host = folder / f"{kernel}_cuda.cpp"
    host.write_text(LAUNCH.sub(lambda m: f"emu::launch({m.group(1)}, {m.group(2)}, ", text))
    return host


def link(folder: Path, objects: dict) -> Path:
    exe = folder / "check_kernels"
    r = subprocess.run([CXX, *map(str, objects.values()), "-o", str(exe), "-lpthread"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


def run(exe: Path, cases: int, seed: int) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), str(cases), str(seed)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda_emulation")
    sources = {"check_kernels": EMULATION / "check_kernels.cpp"}
    for kernel in KERNELS:
        sources[f"{kernel}_cuda"] = host_source(folder, kernel)
        sources[f"{kernel}_cpu"] = ROOT / "csrc" / "cpu" / f"{kernel}_cpu.cpp"
    return folder, compile_objects(folder, sources)


@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_kernels_equal_their_cpu_twins_under_emulation(objects, seed):
    folder, objs = objects
    r = run(link(folder, objs), 30, seed)
    assert r.returncode == 0 and "30 cases of each kernel" in r.stdout, r.stdout[-4000:] + r.stderr[-4000:]


def test_emulation_finds_a_lost_union(objects, tmp_path):
    # Planted race: a union that gives up when another thread re-parented its root meanwhile. It only
    # goes wrong when threads interleave between a find and its atomicMin, which the emulation makes
    # happen; the checker must see it.
    retry = "    if (old == b + 1) return a;\n    b = old - 1;"
    if retry not in (ROOT / "csrc" / "cuda" / "label_cuda.cu").read_text():
        pytest.skip("the labeller's union no longer has the retry this test removes")
    _, objs = objects
    lossy = compile_objects(tmp_path, {"label_cuda": host_source(tmp_path, "label", lambda t: t.replace(retry, "    return a;"))})
    r = run(link(tmp_path, {**objs, **lossy}), 30, 0)
    assert r.returncode == 1 and "label: case" in r.stdout, r.stdout[-2000:]
