"""nnU-Net v2 compatibility: plans, and networks whose state dicts load nnU-Net checkpoints unchanged."""
from .networks import PlainConvUNet, ResidualEncoderUNet, build_network
from .plans import Plans

__all__ = ["Plans", "PlainConvUNet", "ResidualEncoderUNet", "build_network"]
