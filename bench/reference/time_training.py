#!/usr/bin/env python3
"""Times the training step of guidiff's default Fashion-MNIST models, done the usual PyTorch way.

    /usr/bin/python3 bench/reference/time_training.py unet|classifier [--steps 40]
        [--batch-size 64] [--threads T] [--data /usr/share/datasets/fashion-mnist]
        [--seed 0] [--foreach]

MODEL is the network of a recipe, built from its config (random initial weights, as a fresh
`guidiff train` run starts):

    unet        recipes/cfg_unet.json (1.19M parameters): class-conditional eps-model trained
                as recipes/fashion_mnist_cfg_unet.sh does (label dropout p_uncond = 0.1,
                lr 1e-3 with 100 warm-up steps, EMA rate 0.995)
    classifier  recipes/classifier.json: the noise-aware encoder classifier, as
                recipes/fashion_mnist_classifier.sh (lr 1e-3, 100 warm-up steps, EMA 0.995,
                weight decay 0.05)

One training step is what guidiff's trainer does (src/guidiff/training/trainer.cpp,
losses.cpp), written as a PyTorch user would:

* the batch: the next batch_size rows of this epoch's random order (torch.randperm once per
  epoch) taken from the whole training set held in memory as float32 in [-1, 1]
  (pixels / 127.5 - 1); an epoch's short last batch is skipped (guidiff's drop_last); no
  random flip (guidiff's --flip is off by default and in the recipes);
* unet: t ~ U{0..999}, eps ~ N(0, I), each label replaced by the null class 10 with
  probability 0.1 (one U[0, 1) draw per label), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
  (linear schedule, the coefficients in float64 as guidiff computes them), loss = the mean
  squared error of the predicted eps (DDPM's L_simple; F.mse_loss is the same number as
  guidiff's per-sample mean then batch mean, the batch being evenly sized);
* classifier: t ~ U{0..999}, eps, x_t as above, loss = cross-entropy of the logits, plus the
  accuracy bookkeeping guidiff logs (argmax, counts per 10 t-buckets);
* loss.item() (guidiff checks the loss is finite before backward), loss.backward(),
  clip_grad_norm_(max_norm = 1, guidiff's --grad-clip default), AdamW (betas 0.9/0.999,
  eps 1e-8, decoupled weight decay as above, libtorch's defaults = PyTorch's) at the
  warm-up learning rate lr * min(1, (step + 1) / 100), gradients dropped
  (zero_grad(set_to_none=True), as guidiff resets them), and the EMA update
  ema = rate ema + (1 - rate) w parameter by parameter under torch.no_grad (guidiff's and
  guided-diffusion's update_ema loop). --foreach uses torch._foreach_* for the EMA and
  AdamW(foreach=True) instead: not what guidiff does, but what a PyTorch user chasing speed
  would try.

`images_per_second` is guidiff's definition (the `R images/s` of its last stderr line):
steps * batch_size divided by the time from just before the first batch is taken to the end
of the last step, so it includes the first step (lazy allocations, optimiser state) and
the batch gathering, but not the data set loading, the network construction, or the
checkpoint guidiff writes after the last step. `max_rss_mib` is the process's peak RSS
(ru_maxrss), the data set (188 MB as float32) included, as guidiff's `peak memory` is.

Differences from guidiff's run, none of which changes the work per step: the random draws
come from torch's global generator (guidiff seeds a generator per step from (seed, step)),
the epoch order is torch.randperm (guidiff's own Fisher-Yates), the batch is gathered in
the training thread (guidiff prepares it on a background thread), and no progress bar is
drawn. The initial weights are PyTorch's default initialisation with guidiff's zero-init
layers (the last conv of every residual block, attention proj_out and the UNet's output
conv, as guided-diffusion's zero_module), so the losses are comparable but not equal.
The process runs on glibc's default heap, as a PyTorch user's would; guidiff tunes its heap
at start-up (bench/side_by_side.py also runs this script with guidiff's tuning through
GLIBC_TUNABLES, to separate the two).

Prints one JSON object on stdout; `guidiff_args` are the `guidiff train` arguments doing the
same work (subcommand first; add --out-dir, and --threads before `train`).
"""

import time

_SCRIPT_START = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import guidiff_reference as reference  # noqa: E402

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TIMESTEPS = 1000      # guidiff's --timesteps default (linear schedule)
GRAD_CLIP = 1.0       # guidiff's --grad-clip default
ACCURACY_BUCKETS = 10  # guidiff's --accuracy-buckets default

# The recipes' settings (recipes/fashion_mnist_*.sh).
MODELS = {
    "unet": dict(task="diffusion", config="recipes/cfg_unet.json", p_uncond=0.1, lr=1e-3,
                 warmup=100, ema_rate=0.995, weight_decay=0.0),
    "classifier": dict(task="classifier", config="recipes/classifier.json", p_uncond=0.0,
                       lr=1e-3, warmup=100, ema_rate=0.995, weight_decay=0.05),
}


def read_idx(path):
    """An IDX file (LeCun's MNIST format), gzip-compressed: a magic word whose third byte is
    the element type (0x08 = uint8) and fourth the number of dimensions, the dimensions as
    big-endian int32, then the data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(directory):
    """The 60000 training images as float32 [N, 1, 28, 28] in [-1, 1] and labels int64 [N]."""
    pixels = read_idx(os.path.join(directory, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(directory, "train-labels-idx1-ubyte.gz"))
    images = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return images, torch.from_numpy(labels.astype(np.int64))


def zero_initialise(network):
    """guidiff's zero-initialised layers (guided-diffusion's zero_module): the last conv of
    every residual block, every attention block's proj_out, the UNet's output conv and an
    adaptive-pool classifier head."""
    layers = []
    for module in network.modules():
        if isinstance(module, reference.ResBlock):
            layers.append(module.out_layers[-1])
        elif isinstance(module, reference.AttentionBlock):
            layers.append(module.proj_out)
    if isinstance(network, reference.UNetModel):
        layers.append(network.out[-1])
    elif isinstance(network, reference.EncoderUNetModel) and network.config.get("pool") == "adaptive":
        layers.append(network.out[3])
    with torch.no_grad():
        for layer in layers:
            for parameter in layer.parameters():
                parameter.zero_()


def q_sample(schedule, x0, t, noise):
    """DDPM eq. 4, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, in float64 as guidiff does."""
    abar = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return (abar.sqrt() * x0.double() + (1.0 - abar).sqrt() * noise.double()).float()


def diffusion_loss(model, schedule, x0, labels, p_uncond):
    n = x0.shape[0]
    t = torch.randint(0, TIMESTEPS, (n,))
    noise = torch.randn_like(x0)
    # Label dropout (Ho & Salimans 2022, Algorithm 1): the null class is row num_classes.
    dropped = torch.rand(n, dtype=torch.float64) < p_uncond
    y = torch.where(dropped, torch.full_like(labels, model.num_classes), labels)
    eps = model(q_sample(schedule, x0, t, noise), t, y)
    return F.mse_loss(eps, noise), None


def classifier_loss(model, schedule, x0, labels):
    n = x0.shape[0]
    t = torch.randint(0, TIMESTEPS, (n,))
    noise = torch.randn_like(x0)
    logits = model(q_sample(schedule, x0, t, noise), t)
    loss = F.cross_entropy(logits, labels)
    correct = logits.detach().argmax(1) == labels
    buckets = t * ACCURACY_BUCKETS // TIMESTEPS
    counts = (torch.bincount(buckets, minlength=ACCURACY_BUCKETS),
              torch.bincount(buckets, weights=correct.double(), minlength=ACCURACY_BUCKETS))
    return loss, counts


def guidiff_args(name, recipe, steps, batch_size, data_dir, seed):
    """The `guidiff train` arguments doing the same work (add --out-dir; --threads goes
    before `train`)."""
    data = "fashion-mnist" if data_dir == FASHION_MNIST else f"fashion-mnist:{data_dir}"
    args = [recipe["task"], "--data", data, "--config", recipe["config"]]
    if recipe["task"] == "diffusion":
        args += ["--conditional", "--p-uncond", f"{recipe['p_uncond']:g}"]
    args += ["--steps", str(steps), "--batch-size", str(batch_size), "--lr", f"{recipe['lr']:g}",
             "--warmup", str(recipe["warmup"]), "--ema-rate", f"{recipe['ema_rate']:g}",
             "--weight-decay", f"{recipe['weight_decay']:g}", "--grad-clip", f"{GRAD_CLIP:g}",
             "--seed", str(seed), "--log-every", "0", "--save-every", "0"]
    return args


def main():
    parser = argparse.ArgumentParser(description="time the PyTorch training step of a recipe's network")
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--data", default=FASHION_MNIST, help="directory of the Fashion-MNIST .gz files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--foreach", action="store_true",
                        help="_foreach EMA and AdamW(foreach=True) (not guidiff's loop)")
    args = parser.parse_args()
    if args.steps < 1 or args.batch_size < 1:
        sys.exit("time_training: --steps and --batch-size must be >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    recipe = MODELS[args.model]

    load_start = time.perf_counter()
    images, labels = load_fashion_mnist(args.data)
    with open(os.path.join(ROOT, recipe["config"])) as f:
        config = json.load(f)
    model = reference.build_network(config)
    zero_initialise(model)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the EMA starts as the weights
    parameters = list(model.parameters())
    ema_parameters = list(ema.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=recipe["lr"], betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=recipe["weight_decay"],
                                  foreach=True if args.foreach else None)
    schedule = reference.make_schedule("linear", TIMESTEPS)
    load_seconds = time.perf_counter() - load_start

    n = images.shape[0]
    if args.batch_size > n:
        sys.exit(f"time_training: --batch-size {args.batch_size} exceeds the {n} images")
    rate = recipe["ema_rate"]
    bucket_totals = torch.zeros(ACCURACY_BUCKETS, dtype=torch.int64)
    bucket_hits = torch.zeros(ACCURACY_BUCKETS, dtype=torch.float64)
    losses = []

    start = time.perf_counter()
    order, position = torch.randperm(n), 0
    for step in range(args.steps):
        if position + args.batch_size > n:  # drop_last: a new epoch
            order, position = torch.randperm(n), 0
        indices = order[position:position + args.batch_size]
        position += args.batch_size
        x0, y = images.index_select(0, indices), labels.index_select(0, indices)

        lr = recipe["lr"] * min(1.0, (step + 1) / recipe["warmup"]) if recipe["warmup"] > 0 else recipe["lr"]
        for group in optimizer.param_groups:
            group["lr"] = lr
        if recipe["task"] == "diffusion":
            loss, _ = diffusion_loss(model, schedule, x0, y, recipe["p_uncond"])
        else:
            loss, (totals, hits) = classifier_loss(model, schedule, x0, y)
            bucket_totals += totals
            bucket_hits += hits
        value = loss.item()
        if not math.isfinite(value):
            sys.exit(f"time_training: loss is {value} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)
        if not math.isfinite(grad_norm.item()):
            sys.exit(f"time_training: gradient norm is not finite at step {step + 1}")
        optimizer.step()
        with torch.no_grad():
            if args.foreach:
                torch._foreach_mul_(ema_parameters, rate)
                torch._foreach_add_(ema_parameters, parameters, alpha=1.0 - rate)
            else:
                for target, source in zip(ema_parameters, parameters):
                    target.mul_(rate).add_(source, alpha=1.0 - rate)
        losses.append(value)
    seconds = time.perf_counter() - start

    images_done = args.steps * args.batch_size
    print(json.dumps({
        "model": args.model,
        "images_per_second": round(images_done / seconds, 3),
        "seconds": round(seconds, 4),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "parameters": sum(p.numel() for p in parameters),
        "first_loss": round(losses[0], 5),
        "last_loss": round(losses[-1], 5),
        "foreach": args.foreach,
        "load_seconds": round(load_seconds, 4),
        "script_seconds": round(time.perf_counter() - _SCRIPT_START, 4),
        "torch": torch.__version__,
        "guidiff_args": guidiff_args(args.model, recipe, args.steps, args.batch_size, args.data,
                                     args.seed),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
