"""GAN models written the way third-party code writes them, for fastgan.swap's tests and the
``fastgan bench --suite swap`` benchmark.

Each class reproduces an upstream module's class name, attributes, state_dict keys and forward
semantics — BigGAN-PyTorch (layers.py: SN, SNConv2d/SNLinear/SNEmbedding, ccbn, bn, Attention,
GBlock), heykeetae Self-Attention-GAN (spectral.py SpectralNorm, sagan_models.py Self_Attn),
BasicSR (MSRResNet), SRGAN (UpsampleBLock) — written from reading those files, not copied; the
whole-model classes (BigGANStyleG, ...) are small assemblies of them in the upstream style.
None of this uses fastgan: it is what fastgan.swap is pointed at.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "BigGANStyleD", "BigGANStyleG", "GBlock", "MSRResNet", "SAGANStyleG",
           "SNConv2dBG", "SNEmbeddingBG", "SNLinearBG", "SRGANStyleG", "Self_Attn", "SpectralNorm",
           "UpsampleBLock", "bn", "ccbn"]


# ------------------------------------------------------------ BigGAN-PyTorch-style fixtures
class SN:
    """BigGAN's SN mixin: u buffers [1, out], sv buffers; W / sigma with sigma from a fresh
    power iteration on every call, u stored only in training."""

    def _sn_init(self, num_outputs: int, num_svs: int = 1, num_itrs: int = 1, eps: float = 1e-12):
        self.num_svs, self.num_itrs, self.transpose, self.eps = num_svs, num_itrs, False, eps
        for i in range(num_svs):
            self.register_buffer(f"u{i}", torch.randn(1, num_outputs))
            self.register_buffer(f"sv{i}", torch.ones(1))

    def W_(self):
        w = self.weight.view(self.weight.shape[0], -1)
        for _ in range(self.num_itrs):
            with torch.no_grad():
                u = getattr(self, "u0")
                v = F.normalize(u @ w, eps=self.eps)
                u_new = F.normalize(v @ w.t(), eps=self.eps)
                if self.training:
                    u.copy_(u_new)
            sv = (v @ w.t() @ u_new.t()).squeeze()
        if self.training:
            self.sv0.fill_(sv.item())
        return self.weight / sv


class SNConv2dBG(nn.Conv2d, SN):
    def __init__(self, cin, cout, kernel_size=3, padding=1, bias=True):
        nn.Conv2d.__init__(self, cin, cout, kernel_size, padding=padding, bias=bias)
        self._sn_init(cout)

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding)


class SNLinearBG(nn.Linear, SN):
    def __init__(self, cin, cout, bias=True):
        nn.Linear.__init__(self, cin, cout, bias)
        self._sn_init(cout)

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


class SNEmbeddingBG(nn.Embedding, SN):
    def __init__(self, n, d):
        nn.Embedding.__init__(self, n, d)
        self._sn_init(n)

    def forward(self, x):
        return F.embedding(x, self.W_())


# upstream class names, which the adapters recognise
SNConv2dBG.__name__, SNLinearBG.__name__, SNEmbeddingBG.__name__ = "SNConv2d", "SNLinear", "SNEmbedding"


class ccbn(nn.Module):  # noqa: N801 (upstream's name)
    def __init__(self, output_size, input_size, which_linear, eps=1e-5, norm_style="bn"):
        super().__init__()
        self.output_size, self.input_size = output_size, input_size
        self.gain, self.bias = which_linear(input_size, output_size), which_linear(input_size, output_size)
        self.eps, self.cross_replica, self.norm_style = eps, False, norm_style
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))

    def forward(self, x, y):
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        if self.norm_style == "bn":
            out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training,
                               0.1, self.eps)
        else:
            out = F.instance_norm(x, None, None, None, None, True, 0.1, self.eps)
        return out * gain + bias


class bn(nn.Module):  # noqa: N801
    def __init__(self, output_size, eps=1e-5):
        super().__init__()
        self.output_size, self.eps, self.cross_replica = output_size, eps, False
        self.gain = nn.Parameter(torch.ones(output_size))
        self.bias = nn.Parameter(torch.zeros(output_size))
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))

    def forward(self, x, y=None):
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias,
                            self.training, 0.1, self.eps)


class Attention(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.ch = ch
        conv = lambda a, b: SNConv2dBG(a, b, 1, padding=0, bias=False)  # noqa: E731
        self.theta, self.phi = conv(ch, ch // 8), conv(ch, ch // 8)
        self.g, self.o = conv(ch, ch // 2), conv(ch // 2, ch)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x, y=None):
        b, _, h, w = x.shape
        theta = self.theta(x).view(b, self.ch // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(b, self.ch // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(b, self.ch // 2, h * w // 4)
        beta = F.softmax(theta.transpose(1, 2) @ phi, -1)
        return self.gamma * self.o((g @ beta.transpose(1, 2)).view(b, self.ch // 2, h, w)) + x


class GBlock(nn.Module):
    def __init__(self, cin, cout, cond):
        super().__init__()
        self.activation = nn.ReLU()
        self.conv1, self.conv2 = SNConv2dBG(cin, cout), SNConv2dBG(cout, cout)
        self.conv_sc = SNConv2dBG(cin, cout, 1, padding=0)
        self.bn1 = ccbn(cin, cond, lambda a, b: SNLinearBG(a, b, bias=False))
        self.bn2 = ccbn(cout, cond, lambda a, b: SNLinearBG(a, b, bias=False))

    def forward(self, x, y):
        h = F.interpolate(self.activation(self.bn1(x, y)), scale_factor=2)
        x = F.interpolate(x, scale_factor=2)
        h = self.conv2(self.activation(self.bn2(self.conv1(h), y)))
        return h + self.conv_sc(x)


class BigGANStyleG(nn.Module):
    """A BigGAN-PyTorch-style generator: shared class embedding, z and the embedding as the
    ccbn condition of every block, attention after block ``attention_block``, output
    bn -> ReLU -> SNConv2d in an nn.Sequential. Output [N, 3, 4 * 2**n_blocks, same]."""

    def __init__(self, ch=16, dim_z=8, n_classes=5, shared_dim=6, n_blocks=2, attention_block=1):
        super().__init__()
        self.ch = ch
        self.shared = nn.Embedding(n_classes, shared_dim)
        self.linear = SNLinearBG(dim_z, ch * 16)
        cond = shared_dim + dim_z
        self.blocks = nn.ModuleList(
            nn.ModuleList([GBlock(ch, ch, cond)] + ([Attention(ch)] if i == attention_block else []))
            for i in range(n_blocks))
        self.output_layer = nn.Sequential(bn(ch), nn.ReLU(), SNConv2dBG(ch, 3))

    def forward(self, z, y):
        y = self.shared(y)
        cond = torch.cat([y, z], 1)
        h = self.linear(z).view(z.shape[0], self.ch, 4, 4)
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h, cond)
        return torch.tanh(self.output_layer(h))


class BigGANStyleD(nn.Module):
    """A BigGAN-PyTorch-style projection discriminator: SN conv pairs with average pooling,
    attention after the first, sum pooling, SNLinear + SNEmbedding projection. Logits [N]."""

    def __init__(self, ch=16, n_classes=5, n_blocks=1):
        super().__init__()
        self.conv_in = SNConv2dBG(3, ch)
        self.convs = nn.ModuleList(SNConv2dBG(ch, ch) for _ in range(2 * n_blocks))
        self.attention = Attention(ch)
        self.linear = SNLinearBG(ch, 1)
        self.embed = SNEmbeddingBG(n_classes, ch)

    def forward(self, x, y):
        h = F.relu(self.conv_in(x))
        for i in range(0, len(self.convs), 2):
            h = F.avg_pool2d(self.convs[i + 1](F.relu(self.convs[i](h))), 2)
            if i == 0:
                h = self.attention(h)
        h = torch.sum(F.relu(h), [2, 3])
        return self.linear(h).squeeze(1) + torch.sum(self.embed(y) * h, 1)


# ------------------------------------------------------------------- heykeetae fixtures
class SpectralNorm(nn.Module):
    """heykeetae's wrapper: module.weight_bar / _u / _v parameters, iterates on every call."""

    def __init__(self, module, name="weight", power_iterations=1):
        super().__init__()
        self.module, self.name, self.power_iterations = module, name, power_iterations
        w = getattr(module, name)
        h = w.shape[0]
        u = nn.Parameter(F.normalize(w.data.new(h).normal_(), dim=0), requires_grad=False)
        v = nn.Parameter(F.normalize(w.data.new(w.numel() // h).normal_(), dim=0),
                         requires_grad=False)
        del module._parameters[name]
        module.register_parameter(name + "_u", u)
        module.register_parameter(name + "_v", v)
        module.register_parameter(name + "_bar", nn.Parameter(w.data))

    def forward(self, *args):
        m, n = self.module, self.name
        u, v, w = getattr(m, n + "_u"), getattr(m, n + "_v"), getattr(m, n + "_bar")
        mat = w.view(w.shape[0], -1)
        for _ in range(self.power_iterations):
            v.data = mat.data.t().mv(u.data) / (mat.data.t().mv(u.data).norm() + 1e-12)
            u.data = mat.data.mv(v.data) / (mat.data.mv(v.data).norm() + 1e-12)
        setattr(m, n, w / u.dot(mat.mv(v)))
        return m.forward(*args)


class Self_Attn(nn.Module):  # noqa: N801
    def __init__(self, in_dim):
        super().__init__()
        self.chanel_in = in_dim
        self.query_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
        self.key_conv = nn.Conv2d(in_dim, in_dim // 8, 1)
        self.value_conv = nn.Conv2d(in_dim, in_dim, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
        k = self.key_conv(x).view(b, -1, h * w)
        attention = torch.softmax(q @ k, -1)
        out = (self.value_conv(x).view(b, c, h * w) @ attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x, attention


class SAGANStyleG(nn.Module):
    """A heykeetae-style SAGAN generator: SpectralNorm(ConvTranspose) -> BatchNorm -> ReLU
    Sequentials, Self_Attn at the last resolution, returning (image, attention map).
    Output [N, 3, 2**(n_up + 2), same]."""

    def __init__(self, z_dim=8, ch=16, n_up=2):
        super().__init__()
        self.l1 = nn.Sequential(SpectralNorm(nn.ConvTranspose2d(z_dim, ch, 4)), nn.BatchNorm2d(ch),
                                nn.ReLU())
        self.ups = nn.Sequential(*(nn.Sequential(SpectralNorm(nn.ConvTranspose2d(ch, ch, 4, 2, 1)),
                                                 nn.BatchNorm2d(ch), nn.ReLU())
                                   for _ in range(n_up - 1)))
        self.attn1 = Self_Attn(ch)
        self.last = nn.Sequential(nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        out = self.ups(self.l1(z.view(z.shape[0], -1, 1, 1)))
        out, p1 = self.attn1(out)
        return self.last(out), p1


# ------------------------------------------------------------- SR fixtures (BasicSR, SRGAN)
class ResidualBlockNoBN(nn.Module):
    def __init__(self, num_feat):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    def __init__(self, num_feat=8, num_block=2, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        r = 2 if upscale == 4 else upscale
        self.upconv1 = nn.Conv2d(num_feat, num_feat * r * r, 3, 1, 1)
        if upscale == 4:
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(r)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        out = self.body(self.lrelu(self.conv_first(x)))
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.upscale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)


class UpsampleBLock(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.conv = nn.Conv2d(c, c * r * r, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(r)
        self.prelu = nn.PReLU()

    def forward(self, x):
        return self.prelu(self.pixel_shuffle(self.conv(x)))


class _SRResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.prelu = nn.PReLU()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class SRGANStyleG(nn.Module):
    """An SRGAN-style x4 generator (residual blocks with BN and PReLU, two UpsampleBLock x2)."""

    def __init__(self, c=8, n_res=1):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU())
        self.block2 = nn.Sequential(*(_SRResBlock(c) for _ in range(n_res)))
        self.block3 = nn.Sequential(UpsampleBLock(c, 2), UpsampleBLock(c, 2),
                                    nn.Conv2d(c, 3, 9, padding=4))

    def forward(self, x):
        b1 = self.block1(x)
        return (torch.tanh(self.block3(b1 + self.block2(b1))) + 1) / 2
