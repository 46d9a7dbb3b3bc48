#!/usr/bin/env python3
"""A plain-PyTorch reference for guidiff's sampling: the same work done the usual way.

This file re-implements, with torch, numpy and the standard library only, what
`guidiff sample` does for guidiff checkpoints, so the two can be compared for correctness
(bench/reference/check_against_guidiff.py) and for speed (bench/reference/time_reference.py):

* a safetensors reader (the format of docs/formats.md);
* the networks, as torch.nn modules whose parameter names are guidiff's (which follow
  openai/guided-diffusion's state_dict keys), so `load_state_dict(strict=True)` takes the
  committed weights unchanged: the ADM UNet ("unet"), its encoder half as a noise-aware
  classifier ("encoder_unet", attention or adaptive pooling) and the residual MLPs of the
  2-D toy ("mlp_denoiser", "mlp_classifier");
* the discrete schedules, guided-diffusion's timestep respacing and guidiff's `--steps N`
  rule;
* DDIM (eta >= 0) and DDPM ancestral sampling, classifier-free guidance (one batched
  forward of 2N rows) and classifier guidance (Algorithm 2 eps shift for DDIM, Algorithm 1
  mean shift for DDPM);
* guidiff's counter-based noise (Philox4x32-10 + Box-Muller), so that even the stochastic
  samplers can be compared with guidiff element by element. `noise="torch"` uses
  torch.randn instead, the way a PyTorch user would normally write it.

Paper shorthand in the comments: DDPM = Ho et al. 2020, IDDPM = Nichol & Dhariwal 2021,
DDIM = Song et al. 2021, ADM = Dhariwal & Nichol 2021, CFG = Ho & Salimans 2022.
docs/maths.md states every formula with its equation; this file follows it.

Numerics follow guidiff so the results agree to float32 rounding: schedule coefficients
are float64, the x0 / eps / posterior-mean formulas are evaluated in float64 and rounded to
float32, everything else (the networks, the guidance combinations, the DDIM update) runs in
float32. `--float64` runs all of it in float64 instead: the yardstick check_against_guidiff.py
measures float32 rounding with.

Usage as a script (a subset of `guidiff sample`'s flags, same meaning):
    python3 guidiff_reference.py --model models/fashion-mnist/cfg_unet --noise x_T.npy \
        --steps 50 --class 0,1,2,3 --cfg-scale 3 --out samples.npy
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

# The networks' and the sampler's working precision: float32 as guidiff, or float64
# (`--float64`, set_compute_dtype) for a run whose own rounding is negligible.
COMPUTE_DTYPE = torch.float32


def set_compute_dtype(dtype):
    global COMPUTE_DTYPE
    COMPUTE_DTYPE = dtype
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------

# safetensors dtype name -> numpy dtype (little-endian). BF16 has no numpy type: it is read
# as raw 16-bit words and reinterpreted by torch.
_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<i2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def load_safetensors(path):
    """Reads a safetensors file into {name: CPU tensor}.

    Layout: an 8-byte little-endian header length n, n bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then
    the raw little-endian data; offsets count from the first byte after the header.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_size,) = struct.unpack("<Q", data[:8])
    if 8 + header_size > len(data):
        raise ValueError(f"{path}: header length {header_size} runs past the file")
    header = json.loads(data[8:8 + header_size].decode("utf-8"))
    data_start = 8 + header_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype_name = info["dtype"]
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {dtype_name}")
        dtype = _SAFETENSORS_DTYPES[dtype_name]
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or data_start + end > len(data):
            raise ValueError(f"{path}: tensor '{name}': data_offsets {begin}..{end} do not "
                             f"match shape {shape} of {dtype_name}")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=data_start + begin)
        tensor = torch.from_numpy(array.reshape(shape).copy())  # copy: writable, owned
        if dtype_name == "BF16":
            tensor = tensor.view(torch.bfloat16)
        tensors[name] = tensor
    return tensors


def model_files(path):
    """guidiff's checkpoint naming: a run directory means DIR/model.*, and a path ending in
    .safetensors or .json names the pair. Returns (weights, config)."""
    if os.path.isdir(path):
        prefix = os.path.join(path, "model")
    else:
        root, ext = os.path.splitext(path)
        prefix = root if ext in (".safetensors", ".json") else path
    return prefix + ".safetensors", prefix + ".json"


# --------------------------------------------------------------------------------------
# Conditioning: time and class inputs
# --------------------------------------------------------------------------------------

def timestep_embedding(t, dim, max_period=10000.0):
    """The transformer / DDPM sinusoidal features of t (float [N]) -> [N, dim]:
    [cos(t f_0) .. cos(t f_{h-1}), sin(t f_0) .. sin(t f_{h-1})], f_i = max_period^(-i/h),
    h = dim // 2, a zero column appended for odd dim (guided-diffusion's layout)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=COMPUTE_DTYPE) / half)
    args = t.to(COMPUTE_DTYPE)[:, None] * freqs[None, :].to(t.device)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=1)
    return embedding


class TimeInput:
    """Turns a network's time input into the embedding's time t' (float32 [N]).

    discrete_timestep: the original timestep as is. log_snr: lambda mapped linearly onto
    [0, 1000], cleanest (lambda_max) -> 0 and noisiest (lambda_min) -> 1000, the range the
    sinusoidal frequencies were designed for."""

    def __init__(self, config):
        self.kind = config.get("time_input", "discrete_timestep")
        self.lambda_min = float(config.get("lambda_min", -20.0))
        self.lambda_max = float(config.get("lambda_max", 20.0))
        if self.kind not in ("discrete_timestep", "log_snr"):
            raise ValueError(f"unknown time_input '{self.kind}'")

    def __call__(self, time):
        if self.kind == "discrete_timestep":
            return time.to(COMPUTE_DTYPE)
        span = self.lambda_max - self.lambda_min
        return (1000.0 * (self.lambda_max - time.double()) / span).to(COMPUTE_DTYPE)


# --------------------------------------------------------------------------------------
# ADM UNet building blocks (ADM Appendix A; the layout of guided-diffusion's unet.py)
# --------------------------------------------------------------------------------------

def group_norm(groups, channels):
    if channels % groups:
        raise ValueError(f"norm_groups = {groups} does not divide {channels} channels")
    return nn.GroupNorm(groups, channels, eps=1e-5)


def attention_heads(channels, num_heads, num_head_channels):
    """channels / num_head_channels when that is > 0, else num_heads."""
    if num_head_channels > 0:
        if channels % num_head_channels:
            raise ValueError(f"num_head_channels = {num_head_channels} does not divide {channels}")
        return channels // num_head_channels
    if channels % num_heads:
        raise ValueError(f"num_heads = {num_heads} does not divide {channels}")
    return num_heads


def attend(q, k, v):
    """Softmax attention of per-head q, k, v [B, c, T] -> [B, c, T] (Vaswani et al. Eq. 1),
    with the 1/sqrt(c) applied as c^(-1/4) to q and to k, as guided-diffusion does."""
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.to(torch.promote_types(weight.dtype, torch.float32)), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v)


def qkv_attention_legacy(qkv, heads):
    """[N, 3 H c, T] with each head's channels holding [q; k; v] -> [N, H c, T]."""
    batch, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(batch * heads, 3 * ch, length).split(ch, dim=1)
    return attend(q, k, v).reshape(batch, heads * ch, length)


def qkv_attention(qkv, heads):
    """[N, 3 H c, T] laid out [q; k; v], each split into heads -> [N, H c, T]."""
    batch, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = (part.reshape(batch * heads, ch, length) for part in qkv.chunk(3, dim=1))
    return attend(q, k, v).reshape(batch, heads * ch, length)


def upsample_nearest(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample_average(x):
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """h = in_layers(x); add the projected embedding (or FiLM it in as
    GroupNorm(h) * (1 + scale) + shift); out_layers; return skip(x) + h.
    resample "up"/"down" resamples both branches after the first norm (BigGAN style)."""

    def __init__(self, channels, out_channels, emb_channels, dropout, use_scale_shift_norm,
                 norm_groups, resample=None):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.in_layers = nn.Sequential(group_norm(norm_groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(group_norm(norm_groups, out_channels), nn.SiLU(),
                                        nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        if self.resample is None:
            h = self.in_layers(x)
        else:
            norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
            h = norm_act(x)
            if self.resample == "up":
                h, x = upsample_nearest(h), upsample_nearest(x)
            else:
                h, x = downsample_average(h), downsample_average(x)
            h = conv(h)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(norm(x)))) over all spatial positions."""

    def __init__(self, channels, heads, use_new_attention_order, norm_groups):
        super().__init__()
        self.heads = heads
        self.use_new_attention_order = use_new_attention_order
        self.norm = group_norm(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(shape[0], shape[1], -1)
        qkv = self.qkv(self.norm(flat))
        attention = qkv_attention if self.use_new_attention_order else qkv_attention_legacy
        return (flat + self.proj_out(attention(qkv, self.heads))).reshape(shape)


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling: the spatial mean, prepended as an extra token, attends to
    every position (plus a learned positional embedding); its projected output is the
    result. [N, C, S, S] -> [N, output_dim]."""

    def __init__(self, spatial_dim, embed_dim, heads, output_dim):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spatial_dim * spatial_dim + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)

    def forward(self, x):
        h = x.reshape(x.shape[0], x.shape[1], -1)
        h = torch.cat([h.mean(dim=-1, keepdim=True), h], dim=-1)
        h = h + self.positional_embedding[None].to(h.dtype)
        h = self.c_proj(qkv_attention(self.qkv_proj(h), self.heads))
        return h[:, :, 0]


class Downsample(nn.Module):
    """Halves the side: a learned stride-2 conv ("op") or 2x2 average pooling."""

    def __init__(self, channels, use_conv):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = None

    def forward(self, x):
        return self.op(x) if self.op is not None else downsample_average(x)


class Upsample(nn.Module):
    """Doubles the side: nearest neighbour, then (optionally) a 3x3 conv ("conv")."""

    def __init__(self, channels, use_conv):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x):
        x = upsample_nearest(x)
        return self.conv(x) if self.conv is not None else x


class TimestepEmbedSequential(nn.Sequential):
    """Residual blocks get (x, emb), every other layer only x."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# Defaults of guidiff's UNetBackboneConfig (src/guidiff/models/unet_config.hpp), used for
# fields a config file leaves out.
_BACKBONE_DEFAULTS = {
    "image_size": 32, "in_channels": 3, "model_channels": 64, "channel_mult": [1, 2, 2],
    "num_res_blocks": 2, "attention_resolutions": [16], "dropout": 0.0, "conv_resample": True,
    "num_heads": 1, "num_head_channels": -1, "use_scale_shift_norm": False,
    "resblock_updown": False, "use_new_attention_order": False, "norm_groups": 32,
    "time_input": "discrete_timestep",
}


class _UNetBackbone(nn.Module):
    """What the UNet and its encoder-half classifier share: time_embed, input_blocks and
    middle_block (guided-diffusion's UNetModel / EncoderUNetModel down path)."""

    def __init__(self, config):
        super().__init__()
        c = dict(_BACKBONE_DEFAULTS, **config)
        self.config = c
        self.time_input = TimeInput(c)
        mc = c["model_channels"]
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        # Attention at the levels whose feature-map side is listed (downsampling rates).
        self.attention_rates = {c["image_size"] // r for r in c["attention_resolutions"]
                                if r > 0 and c["image_size"] % r == 0}

        ch = c["channel_mult"][0] * mc
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(c["in_channels"], ch, 3, padding=1))])
        self.block_channels = [ch]  # skip widths, for the UNet's up path
        rate = 1
        levels = len(c["channel_mult"])
        for level, mult in enumerate(c["channel_mult"]):
            for _ in range(c["num_res_blocks"]):
                layers = [self.res_block(ch, mult * mc)]
                ch = mult * mc
                if rate in self.attention_rates:
                    layers.append(self.attention_block(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                self.block_channels.append(ch)
            if level + 1 < levels:
                down = (self.res_block(ch, ch, resample="down") if c["resblock_updown"]
                        else Downsample(ch, c["conv_resample"]))
                self.input_blocks.append(TimestepEmbedSequential(down))
                self.block_channels.append(ch)
                rate *= 2
        self.middle_block = TimestepEmbedSequential(
            self.res_block(ch, ch), self.attention_block(ch), self.res_block(ch, ch))
        self.bottom_channels = ch
        self.bottom_rate = rate

    def res_block(self, channels, out_channels, resample=None):
        c = self.config
        return ResBlock(channels, out_channels, 4 * c["model_channels"], c["dropout"],
                        c["use_scale_shift_norm"], c["norm_groups"], resample)

    def attention_block(self, channels):
        c = self.config
        return AttentionBlock(channels,
                              attention_heads(channels, c["num_heads"], c["num_head_channels"]),
                              c["use_new_attention_order"], c["norm_groups"])

    def embed_time(self, time, x):
        t = self.time_input(time.to(x.device))
        return self.time_embed(timestep_embedding(t, self.config["model_channels"]).to(x.dtype))


class UNetModel(_UNetBackbone):
    """The ADM UNet eps-model (ADM Sec. 3, Appendix A). A conditional model's label_emb has
    num_classes + 1 rows: row num_classes is the null class of classifier-free guidance
    (CFG Sec. 3.2; guided-diffusion's has num_classes)."""

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        self.num_classes = int(c.get("num_classes", 0))
        self.learn_sigma = bool(c.get("learn_sigma", False))
        mc = c["model_channels"]
        if self.num_classes > 0:
            self.label_emb = nn.Embedding(self.num_classes + 1, 4 * mc)

        # Up path, deepest level first: num_res_blocks + 1 residual blocks per level, each
        # taking the concatenation with one skip; attention where the down path had it; an
        # upsampling layer ending every level but the top.
        skips = list(self.block_channels)
        ch = self.bottom_channels
        rate = self.bottom_rate
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(c["channel_mult"]))):
            width = c["channel_mult"][level] * mc
            for i in range(c["num_res_blocks"] + 1):
                layers = [self.res_block(ch + skips.pop(), width)]
                ch = width
                if rate in self.attention_rates:
                    layers.append(self.attention_block(ch))
                if level > 0 and i == c["num_res_blocks"]:
                    layers.append(self.res_block(ch, ch, resample="up") if c["resblock_updown"]
                                  else Upsample(ch, c["conv_resample"]))
                    rate //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        out_channels = c["in_channels"] * (2 if self.learn_sigma else 1)
        self.out = nn.Sequential(group_norm(c["norm_groups"], ch), nn.SiLU(),
                                 nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x, time, y=None):
        """x [N, C, H, W], time [N] (int64 timesteps or float lambda), y int64 [N] in
        [0, num_classes] (None: the null class) -> [N, out_channels, H, W]."""
        emb = self.embed_time(time, x)
        if self.num_classes > 0:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
            emb = emb + self.label_emb(y.to(x.device))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


class EncoderUNetModel(_UNetBackbone):
    """The UNet's down half as a noise-aware classifier p_phi(y | x_t) (ADM Sec. 4.1):
    logits [N, num_classes], differentiable in x."""

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        ch = self.bottom_channels
        num_classes = int(c.get("num_classes", 10))
        pool = c.get("pool", "attention")
        if pool == "adaptive":
            self.out = nn.Sequential(group_norm(c["norm_groups"], ch), nn.SiLU(),
                                     nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(ch, num_classes, 1),
                                     nn.Flatten())
        elif pool == "attention":
            heads = attention_heads(ch, c["num_heads"], c["num_head_channels"])
            self.out = nn.Sequential(
                group_norm(c["norm_groups"], ch), nn.SiLU(),
                AttentionPool2d(c["image_size"] // self.bottom_rate, ch, heads, num_classes))
        else:
            raise ValueError(f"unknown classifier pool '{pool}'")

    def forward(self, x, time):
        emb = self.embed_time(time, x)
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb))


# --------------------------------------------------------------------------------------
# Residual MLPs for the 2-D toy (src/guidiff/models/mlp.hpp)
# --------------------------------------------------------------------------------------

_MLP_DEFAULTS = {"data_dim": 2, "hidden_channels": 128, "num_blocks": 3, "time_channels": 64,
                 "num_classes": 0, "time_input": "discrete_timestep"}


class _MlpBody(nn.Module):
    """emb = time_embed(sinusoidal(t')); h = input(x); h = h + block(h + emb) per block,
    a block being SiLU, Linear, SiLU, Linear."""

    def __init__(self, config):
        super().__init__()
        c = dict(_MLP_DEFAULTS, **config)
        self.config = c
        self.time_input = TimeInput(c)
        hidden = c["hidden_channels"]
        self.time_embed = nn.Sequential(nn.Linear(c["time_channels"], hidden), nn.SiLU(),
                                        nn.Linear(hidden, hidden))
        self.input = nn.Linear(c["data_dim"], hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                          nn.Linear(hidden, hidden))
            for _ in range(c["num_blocks"]))

    def embed_time(self, time, x):
        t = self.time_input(time.to(x.device))
        return self.time_embed(timestep_embedding(t, self.config["time_channels"]).to(x.dtype))

    def body(self, x, emb):
        h = self.input(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return h


class MlpDenoiser(_MlpBody):
    """(x, t [, y]) -> eps [N, data_dim]; classes through an embedding with a null row."""

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        self.num_classes = int(c["num_classes"])
        self.learn_sigma = False
        if self.num_classes > 0:
            self.label_emb = nn.Embedding(self.num_classes + 1, c["hidden_channels"])
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(c["hidden_channels"], c["data_dim"]))

    def forward(self, x, time, y=None):
        emb = self.embed_time(time, x)
        if self.num_classes > 0:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
            emb = emb + self.label_emb(y.to(x.device))
        return self.out(self.body(x, emb))


class MlpClassifier(_MlpBody):
    """(x, t) -> logits [N, num_classes], differentiable in x."""

    def __init__(self, config):
        super().__init__(config)
        c = self.config
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(c["hidden_channels"], c["num_classes"]))

    def forward(self, x, time):
        return self.out(self.body(x, self.embed_time(time, x)))


_NETWORKS = {"unet": UNetModel, "encoder_unet": EncoderUNetModel,
             "mlp_denoiser": MlpDenoiser, "mlp_classifier": MlpClassifier}


def build_network(config):
    """The network a guidiff model config (the .json beside the weights) describes."""
    kind = config.get("kind")
    if kind not in _NETWORKS:
        raise ValueError(f"model kind '{kind}' is not supported here "
                         f"(supported: {', '.join(sorted(_NETWORKS))})")
    fields = {k: v for k, v in config.items() if k != "kind"}
    return _NETWORKS[kind](fields)


def load_network(path, device="cpu"):
    """Builds the network from PATH's config and loads its weights (strict: every tensor
    present, none extra). Returns (network in eval mode with frozen parameters, config)."""
    weights, config_file = model_files(path)
    with open(config_file) as f:
        config = json.load(f)
    network = build_network(config)
    network.load_state_dict(load_safetensors(weights), strict=True)
    network.to(device, COMPUTE_DTYPE).eval().requires_grad_(False)
    return network, config


def sample_shape(config):
    """One sample's shape for a denoiser config: [C, H, W] for a UNet, [D] for an MLP."""
    if config["kind"] == "unet":
        c = dict(_BACKBONE_DEFAULTS, **config)
        return [c["in_channels"], c["image_size"], c["image_size"]]
    return [dict(_MLP_DEFAULTS, **config)["data_dim"]]


# --------------------------------------------------------------------------------------
# Schedules and respacing (docs/maths.md sections 1 and 3)
# --------------------------------------------------------------------------------------

def linear_betas(num_timesteps):
    """DDPM Sec. 4: betas from 1e-4 to 0.02 for T = 1000, both ends scaled by 1000/T."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps, max_beta=0.999):
    """IDDPM eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), s = 0.008;
    beta_i = 1 - abar((i+1)/T)/abar(i/T), clipped at max_beta."""
    def f(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2.0) ** 2
    T = float(num_timesteps)
    return torch.tensor([min(1.0 - f((i + 1) / T) / f(i / T), max_beta)
                         for i in range(num_timesteps)], dtype=torch.float64)


class Schedule:
    """A discrete schedule and the float64 coefficients every sampler needs.

    Step index i = 0..K-1 (the papers' t = i + 1); abar_{-1} = 1. timestep_map[i] is the
    original timestep the model is called with at step i (IDDPM Sec. 4 respacing)."""

    def __init__(self, betas, timestep_map=None):
        betas = betas.to(torch.float64)
        n = betas.shape[0]
        self.betas = betas
        self.timestep_map = list(range(n)) if timestep_map is None else list(timestep_map)
        alphas = 1.0 - betas
        # DDPM Sec. 2: abar_t = prod_{s <= t} alpha_s.
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.reciprocal().sqrt()
        self.sqrt_recipm1_alphas_cumprod = (self.alphas_cumprod.reciprocal() - 1.0).sqrt()
        # DDPM eqs. 6-7: beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, and the posterior
        # mean mu~_t = coef1 x0 + coef2 x_t.
        one_minus_abar = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus_abar
        # beta~ is 0 at the first step; its log is replaced by that of the next step, as in
        # guided-diffusion (a one-step schedule uses log beta_0).
        first = self.posterior_variance[1:2] if n > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat(
            [first, self.posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus_abar
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * alphas.sqrt()
                                     / one_minus_abar)

    @property
    def num_steps(self):
        return self.betas.shape[0]


def make_schedule(kind="linear", num_timesteps=1000):
    betas = linear_betas(num_timesteps) if kind == "linear" else cosine_betas(num_timesteps)
    return Schedule(betas)


def space_timesteps(num_timesteps, spec):
    """guided-diffusion's timestep_respacing: "ddimN" (the first integer stride giving
    exactly N steps) or section counts "a,b,c" (T cut into near-equal sections, the first
    T % n one step longer; a section of `size` steps keeping `count` takes
    round(j (size - 1)/(count - 1)), both ends included, Python's round-half-to-even)."""
    spec = spec.strip()
    if not spec:
        return list(range(num_timesteps))
    if spec.startswith("ddim"):
        desired = int(spec[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
    counts = [int(x) for x in spec.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    kept, start = set(), 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        frac_stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += frac_stride
        start += size
    return sorted(kept)


def kept_timesteps(num_timesteps, steps=0, respacing="", sampler="ddim"):
    """guidiff's choice of kept timesteps (src/guidiff/sampling/generate.cpp): an explicit
    respacing spec; else all T when steps is 0 or T; else, for DDIM, "ddimN" when it gives
    exactly N steps (T = 1000, N = 50: 0, 20, ..., 980); else the evenly spaced sections "N"."""
    if respacing:
        return space_timesteps(num_timesteps, respacing)
    if steps in (0, num_timesteps):
        return list(range(num_timesteps))
    if sampler == "ddim":
        try:
            kept = space_timesteps(num_timesteps, f"ddim{steps}")
            if len(kept) == steps:
                return kept
        except ValueError:
            pass
    return space_timesteps(num_timesteps, str(steps))


def respace(base, kept):
    """IDDPM Sec. 4: keep abar at the kept timesteps, beta_k = 1 - abar_{S_k}/abar_{S_{k-1}}
    (abar before the first = 1), so the marginals q(x | x0) at the kept steps are unchanged
    and the trained eps-model stays valid; the model still sees the original S_k."""
    abar = base.alphas_cumprod.tolist()
    betas, previous = [], 1.0
    for t in kept:
        betas.append(1.0 - abar[t] / previous)
        previous = abar[t]
    return Schedule(torch.tensor(betas, dtype=torch.float64), timestep_map=kept)


# --------------------------------------------------------------------------------------
# Noise: guidiff's counter-based streams, or torch.randn
# --------------------------------------------------------------------------------------

_MASK32 = np.uint64(0xFFFFFFFF)


def _philox4x32_10(c0, c1, c2, c3, key0, key1):
    """Philox4x32-10 (Salmon et al. 2011) on arrays of 32-bit words held in uint64:
    a keyed bijection of the 128-bit counter (c0, c1, c2, c3)."""
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    k0, k1 = np.uint64(key0), np.uint64(key1)
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + w0) & _MASK32, (k1 + w1) & _MASK32
        p0, p1 = m0 * c0, m1 * c2  # 32 x 32 -> 64-bit products
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32)
    return c0, c1, c2, c3


def _box_muller(a, b):
    """Two 32-bit uniforms -> two standard normals (u1 in (0, 1), so log u1 is finite)."""
    u1 = (a.astype(np.float64) + 0.5) * 2.0 ** -32
    theta = 2.0 * math.pi * b.astype(np.float64) * 2.0 ** -32
    radius = np.sqrt(-2.0 * np.log(u1))
    return (radius * np.cos(theta)).astype(np.float32), (radius * np.sin(theta)).astype(np.float32)


class GuidiffNoise:
    """guidiff's SampleNoise: the normal drawn for (seed, sample index, stream, element) is
    a pure function of the four. Key = seed; counter = (element block of 4, stream, index
    low word, index high word). Stream -1 is x_T; sampler step i uses stream i."""

    INITIAL_STREAM = -1

    def __init__(self, seed=0):
        self.seed = int(seed)

    def normal(self, sample_indices, stream, shape):
        per_sample = int(np.prod(shape, dtype=np.int64))
        blocks = (per_sample + 3) // 4
        index = np.asarray(sample_indices, dtype=np.uint64)[:, None]
        block = np.arange(blocks, dtype=np.uint64)[None, :]
        c0 = np.broadcast_to(block, (index.shape[0], blocks))
        c1 = np.full_like(c0, np.uint64(stream & 0xFFFFFFFF))
        c2 = np.broadcast_to(index & _MASK32, c0.shape)
        c3 = np.broadcast_to(index >> np.uint64(32), c0.shape)
        bits = _philox4x32_10(c0, c1, c2, c3, self.seed & 0xFFFFFFFF, self.seed >> 32)
        v0, v1 = _box_muller(bits[0], bits[1])
        v2, v3 = _box_muller(bits[2], bits[3])
        values = np.stack([v0, v1, v2, v3], axis=-1).reshape(index.shape[0], -1)[:, :per_sample]
        return torch.from_numpy(np.ascontiguousarray(values)).reshape(-1, *shape)


class TorchNoise:
    """torch.randn from a seeded generator: the usual PyTorch way (not guidiff's values)."""

    INITIAL_STREAM = -1

    def __init__(self, seed=0):
        self.generator = torch.Generator().manual_seed(int(seed))

    def normal(self, sample_indices, stream, shape):
        return torch.randn(len(sample_indices), *shape, generator=self.generator)


# --------------------------------------------------------------------------------------
# Gaussian diffusion maths (docs/maths.md section 2)
# --------------------------------------------------------------------------------------

def predict_x0_from_eps(schedule, x, i, eps):
    """DDPM eq. 4 solved for x0: x0 = x_t / sqrt(abar) - sqrt(1/abar - 1) eps (float64)."""
    return (schedule.sqrt_recip_alphas_cumprod[i] * x.double()
            - schedule.sqrt_recipm1_alphas_cumprod[i] * eps.double()).to(x.dtype)


def predict_eps_from_x0(schedule, x, i, x0):
    """DDPM eq. 4 solved for eps: eps = (x_t / sqrt(abar) - x0) / sqrt(1/abar - 1)."""
    return ((schedule.sqrt_recip_alphas_cumprod[i] * x.double() - x0.double())
            / schedule.sqrt_recipm1_alphas_cumprod[i]).to(x.dtype)


# --------------------------------------------------------------------------------------
# Denoisers with guidance: callables (x, t, y) -> eps
# --------------------------------------------------------------------------------------

def plain_denoiser(network, unconditional=False):
    """eps_theta(x_t, t, y). A conditional network given y=None, or used `unconditional`
    (its null class, guidiff's --unconditional), predicts for the null class; an
    unconditional network ignores y."""
    def eps(x, t, y):
        if network.num_classes == 0 or unconditional:
            y = None
        out = network(x, t, y)
        # A model that learns its variance outputs [eps; variance]: keep eps.
        return out[:, :x.shape[1]] if network.learn_sigma else out
    return eps


def classifier_free_guidance(network, w):
    """CFG eq. 6: eps~ = (1 + w) eps(x, c) - w eps(x, null), the conditional and the null
    rows through the network in ONE batched forward of 2N rows."""
    null = network.num_classes

    def eps(x, t, y):
        null_labels = torch.full_like(y, null)
        out = network(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_labels]))
        out = out[:, :x.shape[1]] if network.learn_sigma else out
        conditional, unconditional = out.chunk(2, dim=0)
        return (1.0 + w) * conditional - w * unconditional
    return eps


def class_log_prob_gradient(classifier, x_t, t, y):
    """grad_x log p_phi(y | x_t): log_softmax of the logits at each sample's y, summed over
    the batch (the samples' gradients are independent), one backward pass."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(x, t), dim=1)
        selected = log_probs.gather(1, y[:, None]).sum()
        return torch.autograd.grad(selected, x)[0]


def classifier_guided_denoiser(base_eps, classifier, scale, original_schedule):
    """ADM Algorithm 2 (the score view): eps' = eps - sqrt(1 - abar_t) s grad log p_phi(y|x_t),
    with abar_t looked up at the ORIGINAL timestep t (respacing keeps abar at kept steps).
    The diffusion model runs without gradients; only the classifier is differentiated."""
    abar = original_schedule.alphas_cumprod

    def eps(x, t, y):
        base = base_eps(x, t, y)
        gradient = class_log_prob_gradient(classifier, x, t, y)
        sigma = (1.0 - abar[t.cpu()]).sqrt().reshape(-1, *([1] * (x.dim() - 1))).to(x.device)
        return base - (scale * sigma * gradient.double()).to(base.dtype)
    return eps


# --------------------------------------------------------------------------------------
# Samplers (docs/maths.md section 4)
# --------------------------------------------------------------------------------------

def model_prediction(eps_fn, schedule, x, i, labels, clip_x0):
    """The start of every step: the original timestep t of step i, the model's eps at x and
    the x0 it predicts (clamped to [-1, 1] when asked)."""
    t = torch.full((x.shape[0],), schedule.timestep_map[i], dtype=torch.long, device=x.device)
    eps = eps_fn(x, t, labels)
    x0 = predict_x0_from_eps(schedule, x, i, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    return t, eps, x0


def ddim_sample(eps_fn, schedule, x_T, labels, clip_x0, eta=0.0, noise=None, sample_indices=None):
    """DDIM eq. 12 with sigma_t(eta) of eq. 16, in guided-diffusion's ddim_sample form:
    x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1} - sigma^2) eps + sigma z, where x0 is
    clamped to [-1, 1] when asked and eps recomputed from it so the two terms agree."""
    x = x_T
    for i in reversed(range(schedule.num_steps)):
        t, eps, x0 = model_prediction(eps_fn, schedule, x, i, labels, clip_x0)
        eps = predict_eps_from_x0(schedule, x, i, x0)
        abar = schedule.alphas_cumprod[i].item()
        abar_prev = schedule.alphas_cumprod_prev[i].item()
        sigma = (eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar))
                 * math.sqrt(1.0 - abar / abar_prev))
        direction = math.sqrt(max(0.0, 1.0 - abar_prev - sigma * sigma))
        x = x0 * math.sqrt(abar_prev) + direction * eps
        if eta > 0.0 and i > 0:
            x = x + sigma * noise.normal(sample_indices, i, x.shape[1:]).to(x.device, x.dtype)
    return x


def ddpm_sample(eps_fn, schedule, x_T, labels, clip_x0, noise, sample_indices,
                classifier=None, classifier_scale=0.0):
    """DDPM ancestral sampling (DDPM Algorithm 2) with fixed-small variance beta~_t (DDPM
    Sec. 3.2): x_{t-1} = mu + sqrt(beta~_t) z, mu the posterior mean (DDPM eq. 7) at the
    predicted (optionally clamped) x0; no noise at the last step. With a classifier,
    ADM Algorithm 1: mu + s Sigma grad log p_phi(y | x_t), gradient at x_t and original t."""
    x = x_T
    for i in reversed(range(schedule.num_steps)):
        t, eps, x0 = model_prediction(eps_fn, schedule, x, i, labels, clip_x0)
        mean = (schedule.posterior_mean_coef1[i] * x0.double()
                + schedule.posterior_mean_coef2[i] * x.double()).to(x.dtype)
        variance = schedule.posterior_variance[i].to(x.dtype)
        if classifier is not None and classifier_scale != 0.0:
            gradient = class_log_prob_gradient(classifier, x, t, labels)
            mean = mean + classifier_scale * variance * gradient
        if i > 0:
            z = noise.normal(sample_indices, i, x.shape[1:]).to(x.device, x.dtype)
            log_variance = schedule.posterior_log_variance_clipped[i].to(x.dtype)
            x = mean + torch.exp(0.5 * log_variance) * z
        else:
            x = mean
    return x


# --------------------------------------------------------------------------------------
# End to end, as `guidiff sample`
# --------------------------------------------------------------------------------------

def parse_classes(spec, num_samples):
    """--class: one index or a comma list cycled over the samples (None: no labels)."""
    if spec is None or spec == "":
        return None
    classes = [int(c) for c in str(spec).split(",")]
    return torch.tensor([classes[k % len(classes)] for k in range(num_samples)], dtype=torch.long)


def generate(model, x_T, labels=None, classifier=None, sampler="ddim", steps=0, respacing="",
             eta=0.0, cfg_scale=0.0, classifier_scale=0.0, unconditional=False, clip_x0=None,
             schedule="linear", timesteps=1000, batch_size=64, seed=0, noise="guidiff"):
    """Samples like guidiff's generate(): x_T [N, ...] float32, labels int64 [N] or None.

    model / classifier: networks from load_network. noise: "guidiff" (guidiff's streams, so
    stochastic samplers give guidiff's values), "torch" (torch.randn), or an object with
    GuidiffNoise's normal(sample_indices, stream, shape). CFG wraps the
    model first and classifier guidance (DDIM) then shifts its eps, as guidiff combines
    them. Returns float32 [N, ...]."""
    if cfg_scale != 0.0 and (labels is None or model.num_classes == 0):
        raise ValueError("classifier-free guidance needs a conditional model and labels")
    if classifier_scale != 0.0 and (labels is None or classifier is None):
        raise ValueError("classifier guidance needs a classifier and labels")
    if sampler == "ddpm" and model.learn_sigma:
        # guidiff's DDPM then uses the learned-range variance (IDDPM eq. 15); this reference
        # implements the fixed-small variance only.
        raise NotImplementedError("DDPM with a learn_sigma model (learned-range variance)")
    if clip_x0 is None:
        clip_x0 = x_T.dim() == 4  # images [N, C, H, W]: clamp x0 to [-1, 1]
    original = make_schedule(schedule, timesteps)
    spaced = respace(original, kept_timesteps(timesteps, steps, respacing, sampler))

    eps_fn = (classifier_free_guidance(model, cfg_scale) if cfg_scale != 0.0
              else plain_denoiser(model, unconditional))
    if classifier_scale != 0.0 and sampler == "ddim":
        eps_fn = classifier_guided_denoiser(eps_fn, classifier, classifier_scale, original)
    if isinstance(noise, str):
        noise_source = GuidiffNoise(seed) if noise == "guidiff" else TorchNoise(seed)
    else:
        noise_source = noise  # an object with normal(sample_indices, stream, shape)

    # The diffusion model never needs gradients; the classifier's gradient does, so the
    # loop runs under no_grad (enable_grad is local to the gradient) when guided by a
    # classifier, and under inference_mode otherwise.
    needs_grad = classifier_scale != 0.0
    parts = []
    with (torch.no_grad() if needs_grad else torch.inference_mode()):
        for begin in range(0, x_T.shape[0], batch_size):
            end = min(begin + batch_size, x_T.shape[0])
            x = x_T[begin:end].to(COMPUTE_DTYPE)
            y = labels[begin:end] if labels is not None else None
            indices = np.arange(begin, end)
            if sampler == "ddim":
                out = ddim_sample(eps_fn, spaced, x, y, clip_x0, eta, noise_source, indices)
            elif sampler == "ddpm":
                out = ddpm_sample(eps_fn, spaced, x, y, clip_x0, noise_source, indices,
                                  classifier, classifier_scale)
            else:
                raise ValueError(f"unknown sampler '{sampler}' (ddim or ddpm)")
            parts.append(out.to(COMPUTE_DTYPE))
    return torch.cat(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description="plain-PyTorch reference of `guidiff sample`")
    parser.add_argument("--model", required=True)
    parser.add_argument("--classifier")
    parser.add_argument("--noise", help="x_T as .npy [N, ...]; default: guidiff's x_T for --seed")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--respacing", default="")
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--class", dest="classes")
    parser.add_argument("--unconditional", action="store_true")
    parser.add_argument("--cfg-scale", type=float, default=0.0)
    parser.add_argument("--classifier-scale", type=float, default=0.0)
    parser.add_argument("--clip", action="store_true")
    parser.add_argument("--no-clip", action="store_true")
    parser.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    parser.add_argument("--timesteps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--noise-source", default="guidiff", choices=["guidiff", "torch"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--float64", action="store_true",
                        help="networks and sampler in float64 (a yardstick, not guidiff's arithmetic)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    set_compute_dtype(torch.float64 if args.float64 else torch.float32)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, config = load_network(args.model)
    classifier = load_network(args.classifier)[0] if args.classifier else None
    shape = sample_shape(config)
    if args.noise:
        x_T = torch.from_numpy(np.load(args.noise).astype(np.float32))
    else:
        x_T = GuidiffNoise(args.seed).normal(np.arange(args.num_samples),
                                             GuidiffNoise.INITIAL_STREAM, shape)
    labels = parse_classes(args.classes, x_T.shape[0])
    clip = True if args.clip else (False if args.no_clip else None)
    samples = generate(model, x_T, labels, classifier, args.sampler, args.steps, args.respacing,
                       args.eta, args.cfg_scale, args.classifier_scale, args.unconditional,
                       clip, args.schedule, args.timesteps, args.batch_size, args.seed,
                       args.noise_source)
    np.save(args.out, samples.numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
