"""petfast's CUDA kernels (labeller, sliding-window tiles, component statistics, fused instance norm,
B-spline prefilter and axis convolution, resampling), compiled for the host against an emulated CUDA
runtime (cuda_emulation/cuda_runtime.h: one fiber per CUDA thread, barriers, warp shuffles and votes
honoured, a thread picked at random at every atomic) and compared with their CPU twins on random
cases (cuda_emulation/check_kernels.cpp). This checks the kernels'
index arithmetic, barriers and union-find races on every machine, with a GPU or without; their speed
and a real GPU's memory model need the CUDA tests (``-m cuda``) on hardware. The last test runs the
model behind the labeller's order of unions (bench/gpu/union_find_model.cpp)."""
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


def as_host(text: str) -> str:
    return LAUNCH.sub(lambda m: f"emu::launch({m.group(1)}, {m.group(2)}, ", text)


def host_source(folder: Path, kernel: str, edit=lambda text: text) -> Path:
    """csrc/cuda/<kernel>_cuda.cu as host C++: its launches become emu::launch calls, and so do those
    of the CUDA headers, copied next to it (a quoted include looks there before -I)."""
    (folder / "cuda").mkdir(exist_ok=True)
    for header in (ROOT / "csrc" / "cuda").glob("*.cuh"):
        (folder / "cuda" / header.name).write_text(as_host(header.read_text()))
    host = folder / f"{kernel}_cuda.cpp"
    host.write_text(as_host(edit((ROOT / "csrc" / "cuda" / f"{kernel}_cuda.cu").read_text())))
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


def test_statistics_atomics_on_one_address(objects):
    # Every run of one component goes to that component's row of the tables, and atomics on one
    # address queue (about 0.7 ns each on an H200): a body-sized component made hundreds of
    # thousands there when each warp added each round's sum. The warps now carry their sums from
    # round to round and each block adds them once, so on the emulated device (2 multiprocessors)
    # the count is about one per resident block, not one per row. The results are checked too.
    folder, objs = objects
    r = subprocess.run([str(link(folder, objs)), "atomics"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    rows, *counts = map(int, re.search(r"(\d+) rows; .* component_stats (\d+), block path (\d+), voxel path (\d+)",
                                       r.stdout).groups())
    assert all(0 < c and c * 20 < rows for c in counts), r.stdout


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


def test_union_order_model(tmp_path):
    # The labeller makes each node's unions previous plane first and left neighbour last
    # (kUnionOrder in csrc/cuda/label_neighbours.h), on the strength of bench/gpu/union_find_model.cpp:
    # a model of warps making their unions in lockstep, on the kernel's own tables. Check that its
    # merge finds scipy's components, and that it still finds plane-first cheaper (with 4 nodes per
    # thread, as the kernels take them, by 1.2-1.8x on whole-body masks; 3-9x with one per thread),
    # and that the compress pass's atomicMins on one root's first voxel, which queue at one address,
    # come from a small part of the component (the root's plane of blocks).
    np = pytest.importorskip("numpy")
    ndi = pytest.importorskip("scipy.ndimage")
    model = ROOT / "bench" / "gpu" / "union_find_model.cpp"
    exe = tmp_path / "union_find_model"
    r = subprocess.run([CXX, "-std=c++17", "-O2", f"-I{ROOT / 'csrc'}", str(model), "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]

    rng = np.random.default_rng(0)
    shape = (48, 64, 64)
    smooth = ndi.gaussian_filter(rng.random(shape, np.float32), 2)
    masks = {"noise": rng.random(shape) < 0.5, "blobs": smooth > np.percentile(smooth, 70)}
    for name, mask in masks.items():
        path = tmp_path / f"{name}.u8"
        mask.astype(np.uint8).tofile(path)
        for path_kind, connectivity in [("block", 26), ("voxel", 6), ("voxel", 18)]:
            structure = ndi.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
            loads = {}
            for first in ("left", "plane"):
                out = subprocess.run([str(exe), str(path), *map(str, shape), path_kind, str(connectivity), first, "128"],
                                     capture_output=True, text=True, check=True).stdout
                loads[first] = int(re.search(r"walk (\d+) loads", out).group(1))
                assert int(re.search(r"(\d+) components", out).group(1)) == ndi.label(mask, structure)[1], out
                if path_kind == "block":  # the compress pass's atomics on one root's entry: from its plane only
                    every, plane = map(int, re.search(r"(\d+) atomicMins .* (\d+) from its plane", out).groups())
                    assert 0 < plane and plane * 10 < every, out
            assert loads["plane"] < loads["left"], (name, path_kind, connectivity, loads)
