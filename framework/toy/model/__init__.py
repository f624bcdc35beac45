"""Training recipe of the bundled toy model: a VAE, then a text-conditioned UNet with ControlNets.

    python -m framework.toy.model fit --config experiments/toyworld/train_vae.yaml
    python -m framework.toy.model fit --config experiments/toyworld/train_diffusion.yaml

Each stage writes diffusers folders (safetensors) that the engine loads with `from_pretrained`,
like any Stable Diffusion checkpoint. `--ckpt_path last` resumes a stage from its last checkpoint.
"""
