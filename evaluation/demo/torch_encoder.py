"""A PyTorch model in the demo: loaded with the project's one loader (MobileCLIP folders and Hub ids with this
package's classes, never their saved code), fused for inference, run without gradients on the CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_mobileclip.loading import fuse_for_inference, load_model_and_processor
from modeling_mobileclip.model_folder import REPARAMETERIZED_SUBFOLDER

from .encoders import Encoder, rgb_on_white


class TorchEncoder(Encoder):
    def __init__(self, model_id: str, reparameterize: bool = True):
        model, self.processor = load_model_and_processor(model_id)
        for method in ("encode_image", "encode_text"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"{model_id} loads as {type(model).__name__}, which has no {method}(): the demo "
                                 "serves CLIP models.")
        digest = hashlib.sha256()
        for key, tensor in model.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        self.fingerprint = digest.hexdigest()
        self.model = model = fuse_for_inference(model) if reparameterize else model.eval()
        path = Path(model_id)
        self.name = f"{path.parent.name}/{path.name}" if path.name == REPARAMETERIZED_SUBFOLDER else path.name or model_id
        scale = getattr(model, "logit_scale", None)
        scale_max = getattr(getattr(model, "config", None), "logit_scale_max", 100.0)
        self.logit_scale = float(scale.detach().exp().clamp(max=scale_max)) if scale is not None else 100.0

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        pixels = self.processor(images=[rgb_on_white(image) for image in images], return_tensors="pt")["pixel_values"]
        return F.normalize(self.model.encode_image(pixels), dim=-1).float().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        input_ids = self.processor(text=list(texts), return_tensors="pt")["input_ids"]
        return F.normalize(self.model.encode_text(input_ids), dim=-1).float().numpy()


__all__ = ["TorchEncoder"]
