"""BigVGAN vocoder with its ECAPA-TDNN speaker encoder (IndexTTS 1.0/1.5)."""

from indextts.vocoder.bigvgan import BigVGAN
from indextts.vocoder.ecapa import ECAPATDNN

__all__ = ["BigVGAN", "ECAPATDNN"]
