#!/usr/bin/env python3
"""Times one benchmark case of the plain-PyTorch reference (guidiff_reference.py).

    /usr/bin/python3 bench/reference/time_reference.py CASE --noise x_T.npy --out samples.npy
        [--steps N] [--class SPEC] [--batch-size B] [--threads T] [--noise-source guidiff|torch]

CASE (the number of samples is x_T's first dimension; 64 for the DDIM cases and 8 for DDPM
in the benchmark):

    ddim50       DDIM, 50 steps, unguided: the UNet's null class
    cfg3         DDIM, 50 steps, classifier-free guidance w = 3, classes 0..9 cycled
    classifier1  DDIM, 50 steps, classifier guidance s = 1 of the null class, classes 0..9
    ddpm1000     DDPM ancestral, all 1000 steps, unguided (null class)

The JSON printed on stdout includes `guidiff_args`: the `guidiff sample` flags that do the
same work, so the caller can run guidiff on the same x_T and compare the saved samples.
With the default --noise-source guidiff, DDPM's per-step noise is guidiff's too (its
counter-based streams for --seed 0), so even the DDPM samples match guidiff's to float32
rounding; --noise-source torch draws it with torch.randn instead (the usual PyTorch way).

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
# the model is used through its null class.
CASES = {
    "ddim50": dict(sampler="ddim", steps=50, classes=None, cfg_scale=0.0,
                   classifier_scale=0.0, unconditional=True),
    "cfg3": dict(sampler="ddim", steps=50, classes=ALL_CLASSES, cfg_scale=3.0,
                 classifier_scale=0.0, unconditional=False),
    "classifier1": dict(sampler="ddim", steps=50, classes=ALL_CLASSES, cfg_scale=0.0,
                        classifier_scale=1.0, unconditional=True),
    "ddpm1000": dict(sampler="ddpm", steps=1000, classes=None, cfg_scale=0.0,
                     classifier_scale=0.0, unconditional=True),
}


def guidiff_args(case, steps, classes, num_samples, batch_size, noise_file):
    """The `guidiff sample` flags doing the same work (add --out and --threads)."""
    args = ["--model", UNET, "--sampler", case["sampler"], "--steps", str(steps),
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
    parser.add_argument("--noise", required=True, help="x_T as .npy [N, 1, 28, 28]")
    parser.add_argument("--out", required=True, help="where to save the samples (.npy)")
    parser.add_argument("--steps", type=int, help="override the case's steps (for quick checks)")
    parser.add_argument("--class", dest="classes", help="override the case's classes")
    parser.add_argument("--batch-size", type=int, default=64, help="as guidiff's (default 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--noise-source", choices=["guidiff", "torch"], default="guidiff")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    case = CASES[args.case]
    steps = args.steps if args.steps is not None else case["steps"]
    classes = args.classes if args.classes is not None else case["classes"]

    x_T = torch.from_numpy(np.load(args.noise).astype(np.float32, copy=False))
    labels = reference.parse_classes(classes, x_T.shape[0])

    load_start = time.perf_counter()
    model, _ = reference.load_network(os.path.join(ROOT, UNET))
    classifier = None
    if case["classifier_scale"]:
        classifier, _ = reference.load_network(os.path.join(ROOT, CLASSIFIER))
    load_seconds = time.perf_counter() - load_start

    start = time.perf_counter()
    samples = reference.generate(
        model, x_T, labels, classifier, sampler=case["sampler"], steps=steps,
        cfg_scale=case["cfg_scale"], classifier_scale=case["classifier_scale"],
        unconditional=case["unconditional"], batch_size=args.batch_size,
        noise=args.noise_source)
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
        "noise_source": args.noise_source,
        "load_seconds": round(load_seconds, 4),
        "script_seconds": round(time.perf_counter() - _SCRIPT_START, 4),
        "torch": torch.__version__,
        "guidiff_args": guidiff_args(case, steps, classes, num_samples, args.batch_size,
                                     args.noise),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
