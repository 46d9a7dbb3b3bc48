#!/usr/bin/env python3
"""Times one benchmark case of the plain-PyTorch reference (guidiff_reference.py).

    /usr/bin/python3 bench/reference/time_reference.py CASE --noise x_T.npy --out samples.npy
        [--model PATH] [--steps N] [--class SPEC] [--batch-size B] [--threads T]
        [--noise-source guidiff|precomputed|torch]

CASE (the number of samples is x_T's first dimension; 64 for the DDIM cases, 8 for DDPM
and 256 2-D points for the toy cases in the benchmark):

    ddim50       DDIM, 50 steps, unguided: the UNet's null class
    cfg3         DDIM, 50 steps, classifier-free guidance w = 3, classes 0..9 cycled
    classifier1  DDIM, 50 steps, classifier guidance s = 1 of the null class, classes 0..9
    ddpm1000     DDPM ancestral, all 1000 steps, unguided (null class)
    toy2d        the 2-D MLP toy: DDPM ancestral, all 1000 steps, classifier-free guidance
                 w = 3, classes 0..3 cycled; x_T [N, 2]
    toy2d_ddim   the 2-D MLP toy: DDIM, all 1000 steps, unguided (null class); x_T [N, 2]

The image cases use the committed models/fashion-mnist/cfg_unet (and classifier); --model
names another denoiser. The toy cases need --model: a conditional mlp_denoiser checkpoint
(`guidiff train diffusion --data mixture --conditional --p-uncond 0.1 ...`, as
bench/side_by_side.py trains one). Vectors are not clamped (guidiff's default for them).

The JSON printed on stdout includes `guidiff_args`: the `guidiff sample` flags that do the
same work, so the caller can run guidiff on the same x_T and compare the saved samples.
With the default --noise-source guidiff, DDPM's per-step noise is guidiff's too (its
counter-based streams for --seed 0), so even the DDPM samples match guidiff's to float32
rounding; --noise-source torch draws it with torch.randn instead (the usual PyTorch way).
--noise-source precomputed (the toy cases' default) gives guidiff's values too, but draws
every step's noise before the timer starts: the timed loop then only looks it up, which is
cheaper than the torch.randn a PyTorch user would call, so it favours the reference. (With
`guidiff`, the reference's own numpy Philox runs inside the timed loop, which a PyTorch user
would not pay: about 0.2 ms a step for 8 images against 0.04 ms for torch.randn, some 1% of
the ddpm1000 case's time.)

`seconds` is the sampling alone (the networks already loaded, no warm-up run), as
`images_per_second` is; `load_seconds` is the model loading, `script_seconds` everything
from the start of this script (imports included). `max_rss_mib` is the process's peak
resident memory (ru_maxrss), imports and weights included.
"""

import time

_SCRIPT_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import guidiff_reference as reference  # noqa: E402

UNET = "models/fashion-mnist/cfg_unet"
CLASSIFIER = "models/fashion-mnist/classifier"
ALL_CLASSES = ",".join(str(k) for k in range(10))

# Each case: sampler, default steps, default classes, CFG weight, classifier scale, whether
# the model is used through its null class, the default model (None: --model is required)
# and the default noise source.
CASES = {
    "ddim50": dict(sampler="ddim", steps=50, classes=None, cfg_scale=0.0,
                   classifier_scale=0.0, unconditional=True, model=UNET, noise="guidiff"),
    "cfg3": dict(sampler="ddim", steps=50, classes=ALL_CLASSES, cfg_scale=3.0,
                 classifier_scale=0.0, unconditional=False, model=UNET, noise="guidiff"),
    "classifier1": dict(sampler="ddim", steps=50, classes=ALL_CLASSES, cfg_scale=0.0,
                        classifier_scale=1.0, unconditional=True, model=UNET, noise="guidiff"),
    "ddpm1000": dict(sampler="ddpm", steps=1000, classes=None, cfg_scale=0.0,
                     classifier_scale=0.0, unconditional=True, model=UNET, noise="guidiff"),
    "toy2d": dict(sampler="ddpm", steps=1000, classes="0,1,2,3", cfg_scale=3.0,
                  classifier_scale=0.0, unconditional=False, model=None, noise="precomputed"),
    "toy2d_ddim": dict(sampler="ddim", steps=1000, classes=None, cfg_scale=0.0,
                       classifier_scale=0.0, unconditional=True, model=None, noise="precomputed"),
}


class PrecomputedNoise:
    """guidiff's per-step noise (its streams for `seed`), drawn for every stream and sample
    up front so the timed sampling loop only looks it up."""

    INITIAL_STREAM = reference.GuidiffNoise.INITIAL_STREAM

    def __init__(self, seed, num_samples, streams, shape):
        source = reference.GuidiffNoise(seed)
        indices = np.arange(num_samples)
        self.table = {stream: source.normal(indices, stream, shape) for stream in streams}

    def normal(self, sample_indices, stream, shape):
        # generate() asks for contiguous sample ranges begin..end-1.
        return self.table[stream][int(sample_indices[0]):int(sample_indices[-1]) + 1]


def guidiff_args(case, model, steps, classes, num_samples, batch_size, noise_file):
    """The `guidiff sample` flags doing the same work (add --out and --threads)."""
    args = ["--model", model, "--sampler", case["sampler"], "--steps", str(steps),
            "--num-samples", str(num_samples), "--batch-size", str(batch_size),
            "--noise", noise_file]
    if case["unconditional"]:
        args.append("--unconditional")
    if classes:
        args += ["--class", classes]
    if case["cfg_scale"]:
        args += ["--cfg-scale", f"{case['cfg_scale']:g}"]
    if case["classifier_scale"]:
        args += ["--classifier", CLASSIFIER, "--classifier-scale",
                 f"{case['classifier_scale']:g}"]
    return args


def main():
    parser = argparse.ArgumentParser(description="time one case of the PyTorch reference")
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--noise", required=True, help="x_T as .npy [N, 1, 28, 28] (toy: [N, 2])")
    parser.add_argument("--model", help="the denoiser (default: the case's; required for the toy cases)")
    parser.add_argument("--out", required=True, help="where to save the samples (.npy)")
    parser.add_argument("--steps", type=int, help="override the case's steps (for quick checks)")
    parser.add_argument("--class", dest="classes", help="override the case's classes")
    parser.add_argument("--batch-size", type=int, default=64, help="as guidiff's (default 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--noise-source", choices=["guidiff", "precomputed", "torch"],
                        help="DDPM/DDIM-eta noise (default: the case's; see above)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    case = CASES[args.case]
    steps = args.steps if args.steps is not None else case["steps"]
    classes = args.classes if args.classes is not None else case["classes"]
    model_path = args.model if args.model is not None else case["model"]
    if model_path is None:
        parser.error(f"case {args.case} needs --model")
    noise_source = args.noise_source if args.noise_source is not None else case["noise"]

    x_T = torch.from_numpy(np.load(args.noise).astype(np.float32, copy=False))
    labels = reference.parse_classes(classes, x_T.shape[0])

    load_start = time.perf_counter()
    model, _ = reference.load_network(os.path.join(ROOT, model_path))
    classifier = None
    if case["classifier_scale"]:
        classifier, _ = reference.load_network(os.path.join(ROOT, CLASSIFIER))
    load_seconds = time.perf_counter() - load_start

    noise = noise_source
    if noise_source == "precomputed":
        # DDPM draws at every step but the last (stream i at step index i > 0); DDIM with
        # eta = 0 draws nothing.
        kept = reference.kept_timesteps(1000, steps, "", case["sampler"])
        streams = range(1, len(kept)) if case["sampler"] == "ddpm" else range(0)
        noise = PrecomputedNoise(0, x_T.shape[0], streams, list(x_T.shape[1:]))

    start = time.perf_counter()
    samples = reference.generate(
        model, x_T, labels, classifier, sampler=case["sampler"], steps=steps,
        cfg_scale=case["cfg_scale"], classifier_scale=case["classifier_scale"],
        unconditional=case["unconditional"], batch_size=args.batch_size,
        noise=noise)
    seconds = time.perf_counter() - start
    np.save(args.out, samples.numpy())

    num_samples = x_T.shape[0]
    print(json.dumps({
        "case": args.case,
        "seconds": round(seconds, 4),
        "images_per_second": round(num_samples / seconds, 4),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "num_samples": num_samples,
        "steps": steps,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "noise_source": noise_source,
        "load_seconds": round(load_seconds, 4),
        "script_seconds": round(time.perf_counter() - _SCRIPT_START, 4),
        "torch": torch.__version__,
        "guidiff_args": guidiff_args(case, model_path, steps, classes, num_samples,
                                     args.batch_size, args.noise),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
