"""The networks, in the official key layout: StyleGAN2 layers, EG3D's tri-plane generator, the 3DPE / Live3D encoders,
tri-plane volume rendering with super-resolution, the editing and reconstruction models, and the two networks of
the training losses (ArcFace identity, LPIPS). Pipelines, data and training live one level up, in ``threedpe``."""
