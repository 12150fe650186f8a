"""``fastconv pictures``: PNGs of a model's first-layer filters and of every conv layer's feature maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastconv.commands import positive_int

NAME = "pictures"
HELP = "draw a model's first-layer filters and each conv layer's feature maps for one image (PNG)"
DESCRIPTION = (
    "For a trained model and one image, write filters_conv1.png (the learned filters of the first conv "
    "layer, as RGB patches) and features_conv<i>.png (the feature maps each conv layer produces for the "
    "image, after its ReLU, or after BatchNorm and ReLU when the model has them) into --out. The "
    "image is centre-cropped and resized to the model's input size "
    "and normalised with the statistics stored in the model file, exactly as for 'fastconv predict'."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="model file (.npz from 'fastconv train' or Sequential.save); "
        "default: the bundled fastconv/weights/catnet.npz%(default).0s",
    )
    parser.add_argument(
        "--image",
        default=None,
        metavar="PATH",
        help="image file; default: scikit-image's sample photo chelsea (a cat)%(default).0s",
    )
    parser.add_argument("--out", default="pictures", metavar="DIR", help="folder for the PNGs")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        metavar="S",
        help="input size S (SxS); default: the image_size stored in the model file, else 64%(default).0s",
    )
    parser.add_argument("--backend", default=None, help="kernel backend; default: the fastest available%(default).0s")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from fastconv import viz
    from fastconv.data import Normalizer, load_image
    from fastconv.model import load_with_metadata
    from fastconv.train import BUNDLED_MODEL

    model_path = Path(args.model) if args.model else BUNDLED_MODEL
    if not model_path.is_file():
        if args.model:
            raise FileNotFoundError(f"--model: no such file {model_path}")
        raise FileNotFoundError(
            f"no --model given and the bundled model {model_path} is absent; train one with 'fastconv train'"
        )
    model, meta = load_with_metadata(model_path, backend=args.backend)
    meta = meta or {}
    size = args.image_size or int(meta.get("image_size", 64))
    try:
        model.output_shape((3, size, size))
    except ValueError as e:
        raise ValueError(
            f"--image-size {size}: {model_path} does not take {size}x{size} images (it was trained at "
            f"{meta.get('image_size', '?')}x{meta.get('image_size', '?')}; {e}); omit --image-size"
        ) from None
    if args.image:
        image_path = Path(args.image)
    else:
        from fastconv.commands.demo import sample_path

        image_path = sample_path("chelsea.png")
    image = load_image(image_path, size)  # (3, S, S) float32 in [0, 1]
    if "normalizer" in meta:
        image = Normalizer.from_dict(meta["normalizer"])(image)
    else:
        print(f"note: {model_path} stores no normalisation statistics; the image is used as [0, 1] values")
    image = np.ascontiguousarray(image, dtype=model.dtype)
    for path in viz.write_pictures(model, image, args.out):
        print(f"wrote {path}")
    return 0
