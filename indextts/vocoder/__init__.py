"""BigVGAN vocoder with its ECAPA-TDNN speaker encoder (IndexTTS 1.0/1.5)."""

from indextts.vocoder.bigvgan import BigVGAN, to_int16
from indextts.vocoder.ecapa import ECAPATDNN

__all__ = ["BigVGAN", "ECAPATDNN", "to_int16"]
