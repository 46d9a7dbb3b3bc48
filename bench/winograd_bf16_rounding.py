"""How much rounding a Winograd convolution whose matrix products run in bfloat16 adds, against a
direct convolution of bfloat16 inputs (what `--bf16` runs today). Everything else is float64,
so the figures isolate the bf16 rounding of the products' operands: the transformed input
V = B^T d B and filter U = G g G^T (Lavin & Gray 2016, Eq. 8-10) for F(4x4, 3x3), which guidiff's
float32 path uses, and F(2x2, 3x3), whose transforms hold only 0, +-1/2 and +-1.

    /usr/bin/python3 bench/winograd_bf16_rounding.py

Prints the mean |error| / mean |exact output| of each, for 32x32 layers of 192 and 384 channels
with unit-variance inputs and filters scaled as a trained network's (1 / sqrt(9 C)).
"""
import torch


def transforms(tile_output):
    """(B^T, G, A^T) of F(m x m, 3x3) for m = 4 (points 0, +-1, +-2, infinity) or m = 2 (0, +-1,
    infinity), in float64."""
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)
    if tile_output == 4:
        return (t([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
                t([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
                t([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]))
    return (t([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
            t([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
            t([[1, 1, 1, 0], [0, 1, -1, -1]]))


def winograd(x, w, tile_output, round_operands):
    """conv2d(x, w, padding 1) for a square image whose side is a multiple of tile_output."""
    bt, g, at = transforms(tile_output)
    tile_input = tile_output + 2
    size = x.shape[2]
    tiles = size // tile_output
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    d = padded.unfold(2, tile_input, tile_output).unfold(3, tile_input, tile_output)
    v = round_operands(torch.einsum("ir,ncturs,js->ntuijc", bt, d, bt))
    u = round_operands(torch.einsum("ia,ocab,jb->ijco", g, w, g))
    m = torch.einsum("ntuijc,ijco->ntuijo", v, u)
    y = torch.einsum("pi,ntuijo,qj->notpuq", at, m, at)
    return y.reshape(x.shape[0], w.shape[0], tiles * tile_output, tiles * tile_output)


def main():
    torch.manual_seed(0)
    to_bf16 = lambda t: t.to(torch.bfloat16).to(torch.float64)
    for channels in (192, 384):
        x = torch.randn(1, channels, 32, 32, dtype=torch.float64)
        w = torch.randn(channels, channels, 3, 3, dtype=torch.float64) / (9 * channels) ** 0.5
        exact = torch.nn.functional.conv2d(x, w, padding=1)
        error = lambda y: ((y - exact).abs().mean() / exact.abs().mean()).item()
        direct = error(torch.nn.functional.conv2d(to_bf16(x), to_bf16(w), padding=1))
        f4 = error(winograd(x, w, 4, to_bf16))
        f2 = error(winograd(x, w, 2, to_bf16))
        check = error(winograd(x, w, 4, lambda t: t))
        print("%d channels: direct, bf16 inputs %.2e; F(4x4,3x3), bf16 products %.2e (%.1fx); "
              "F(2x2,3x3), bf16 products %.2e (%.1fx); F(4x4,3x3) in float64 %.0e"
              % (channels, direct, f4, f4 / direct, f2, f2 / direct, check))


if __name__ == "__main__":
    main()
