"""Training data for the toy model: a seeded pool of rendered toy-world scenes.

Scenes are rendered once (about 7 ms each at 64 px) into a pool of arrays, cached as `.npz`, and
served in random batches. Training scenes come from `sample_scene(seed_offset + i)` with a
`seed_offset` of one million by default, so that evaluation edits drawn from small seeds are
held out.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from framework.backbones.loading import cache_dir
from framework.toy.world import caption, condition_maps, render, sample_scene
from framework.toy.world.scenes import SHAPES

TRAIN_SEED_OFFSET = 1_000_000
"""Training scenes use seeds from here on; evaluation uses seeds below it."""

MODALITIES = ("pose", "scribble")


def object_count(text: str) -> int:
    """How many objects a toy-world caption names (its shape words)."""
    return sum(word in SHAPES for word in re.findall(r"[a-z]+", text))


def images_to_tensor(images: np.ndarray, signed: bool = False) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1], or in [-1, 1] when `signed` (the VAE's range)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 255
    return x * 2 - 1 if signed else x


@dataclass
class ScenePool:
    """Rendered scenes as arrays: images, foreground masks, condition maps and captions."""

    images: np.ndarray  # (n, H, W, 3) uint8
    foreground: np.ndarray  # (n, H, W) bool: objects and figure
    maps: dict[str, np.ndarray]  # modality -> (n, H, W, 3) uint8
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def render_pool(count: int, size: int = 64, seed_offset: int = TRAIN_SEED_OFFSET,
                modalities: tuple[str, ...] = MODALITIES, workers: int = 1) -> ScenePool:
    """Render scenes `seed_offset .. seed_offset + count - 1` at `size` px.

    `workers` > 1 renders contiguous chunks in that many processes; each scene depends only on its
    seed, so the pool is the same for any number of workers.
    """
    if workers > 1 and count >= 2 * workers:
        from concurrent.futures import ProcessPoolExecutor

        bounds = np.linspace(0, count, workers + 1).astype(int)
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(render_pool, bounds[1:] - bounds[:-1], [size] * workers,
                                  seed_offset + bounds[:-1], [tuple(modalities)] * workers))
        return ScenePool(np.concatenate([p.images for p in parts]), np.concatenate([p.foreground for p in parts]),
                         {m: np.concatenate([p.maps[m] for p in parts]) for m in modalities},
                         [c for p in parts for c in p.captions])
    images = np.zeros((count, size, size, 3), np.uint8)
    foreground = np.zeros((count, size, size), bool)
    maps = {m: np.zeros((count, size, size, 3), np.uint8) for m in modalities}
    captions = []
    for i in range(count):
        scene = sample_scene(int(seed_offset) + i, size)
        images[i], masks = render(scene, size)
        foreground[i] = ~masks["background"]
        drawn = condition_maps(scene, size)
        for m in modalities:
            maps[m][i] = drawn[m]
        captions.append(caption(scene))
    return ScenePool(images, foreground, maps, captions)


def _pool_file(count: int, size: int, seed_offset: int, modalities: tuple[str, ...]) -> Path:
    """Cache path; the key includes the renderer's source so a changed world re-renders."""
    from framework.toy import world as toyworld

    source = b"".join(p.read_bytes() for p in sorted(Path(toyworld.__file__).parent.glob("*.py")))
    key = hashlib.sha1(source + repr((count, size, seed_offset, modalities)).encode()).hexdigest()[:12]
    return cache_dir() / "toyworld-pools" / f"pool-{size}px-{count}-{key}.npz"


def load_pool(count: int, size: int = 64, seed_offset: int = TRAIN_SEED_OFFSET,
              modalities: tuple[str, ...] = MODALITIES, cache: bool = True, workers: int = 1) -> ScenePool:
    """Render the pool, or read it from the cache written by an earlier run."""
    path = _pool_file(count, size, seed_offset, tuple(modalities))
    if cache and path.exists():
        data = np.load(path)
        maps = {m: data[f"map_{m}"] for m in modalities}
        return ScenePool(data["images"], data["foreground"], maps, [str(c) for c in data["captions"]])
    pool = render_pool(count, size, seed_offset, tuple(modalities), workers)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, images=pool.images, foreground=pool.foreground, captions=np.array(pool.captions),
                 **{f"map_{m}": a for m, a in pool.maps.items()})
        tmp.replace(path)
    return pool


class PoolDataset(Dataset):
    """Items: index, image in [-1, 1], foreground mask, caption and maps in [0, 1] (or only index and
    caption when `index_only`: `DevicePool` gathers the rest where the model is)."""

    def __init__(self, pool: ScenePool, index_only: bool = False):
        self.pool, self.index_only = pool, index_only

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> dict:
        pool = self.pool
        if self.index_only:
            return {"index": i, "caption": pool.captions[i]}
        item = {
            "index": i,
            "image": images_to_tensor(pool.images[i], signed=True),
            "foreground": torch.from_numpy(pool.foreground[i])[None].float(),
            "caption": pool.captions[i],
        }
        for m, maps in pool.maps.items():
            item[m] = images_to_tensor(maps[i])
        return item


class DevicePool:
    """The pool's arrays as uint8 tensors on one device, turned into `PoolDataset` items by index.

    On a GPU the DataLoader then moves only indices: a batch of 256 full items is about 40 MB of
    float32 copied through worker processes and across to the device, every step (1.2 GB for a pool of
    30000 64 px scenes with two maps, once, here).
    """

    def __init__(self, pool: ScenePool, device: torch.device | str):
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.images, self.foreground = to(pool.images), to(pool.foreground)
        self.maps = {m: to(a) for m, a in pool.maps.items()}

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """image (b, 3, H, W) in [-1, 1], foreground (b, 1, H, W), maps (b, 3, H, W) in [0, 1]: as `PoolDataset`."""
        index = index.to(self.images.device)
        as_float = lambda a: a[index].movedim(-1, -3).float() / 255  # noqa: E731
        items = {"image": as_float(self.images) * 2 - 1, "foreground": self.foreground[index][:, None].float()}
        items.update({m: as_float(a) for m, a in self.maps.items()})
        return items


class ToyWorldData(L.LightningDataModule):
    """Random batches from a seeded pool of rendered toy-world scenes."""

    def __init__(self, size: int = 64, pool_size: int = 10000, batch_size: int = 32,
                 seed_offset: int = TRAIN_SEED_OFFSET, modalities: tuple[str, ...] = MODALITIES,
                 num_workers: int = 0, cache: bool = True, render_workers: int = 1,
                 single_object_weight: float = 1.0, index_only: bool = False, seed: int = 0):
        """
        Args:
            size: Render size in pixels.
            pool_size: Number of distinct training scenes.
            batch_size: Scenes per step.
            seed_offset: First scene seed (evaluation edits use seeds below it).
            modalities: Condition maps to render ("pose", "scribble", "lines").
            num_workers: DataLoader workers.
            cache: Keep the rendered pool in the model cache folder ($ITO_EDIT_CACHE).
            render_workers: Processes that render the pool (about 7 ms a scene at 64 px on one core);
                the pool does not depend on it.
            single_object_weight: How much more often a scene with one object is drawn than one with
                two or three (1: uniform, without replacement per epoch; otherwise drawn with
                replacement). A caption naming two objects does not say which shape is which object's,
                so it teaches the shape words less than a caption naming one.
            index_only: Batches carry only scene indices and captions; the training stage gathers images,
                masks and maps from a copy of the pool on its device (`DevicePool`). For a GPU, where
                copying full batches through the DataLoader would cost about as much as a step.
            seed: Seed of the batch order.
        """
        super().__init__()
        self.save_hyperparameters()
        self.pool: ScenePool | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.pool is None:
            h = self.hparams
            self.pool = load_pool(h.pool_size, h.size, h.seed_offset, tuple(h.modalities), h.cache,
                                  h.render_workers)

    def scene_weights(self) -> torch.Tensor:
        """Each pool scene's drawing weight: `single_object_weight` for one object, else 1."""
        single = torch.tensor([object_count(c) == 1 for c in self.pool.captions])
        return torch.where(single, float(self.hparams.single_object_weight), 1.0).double()

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        generator = torch.Generator().manual_seed(h.seed)
        order = {"shuffle": True}
        if h.single_object_weight != 1.0:
            order = {"sampler": WeightedRandomSampler(self.scene_weights(), len(self.pool), generator=generator)}
        return DataLoader(PoolDataset(self.pool, h.index_only), batch_size=h.batch_size, drop_last=True, generator=generator,
                          num_workers=h.num_workers, persistent_workers=h.num_workers > 0, **order)
