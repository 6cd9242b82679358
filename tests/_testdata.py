"""Optional real data for tests: ../shared/data beside the checkout, or PETFAST_SHARED_DATA."""
import os
from pathlib import Path

SHARED = Path(os.environ.get("PETFAST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
ORGANS = SHARED / "organs"


def organ_maps():
    """The real autoPET organ label maps (.nii.gz), or [] when the shared data is absent."""
    return sorted(ORGANS.glob("*.nii.gz")) if ORGANS.is_dir() else []
