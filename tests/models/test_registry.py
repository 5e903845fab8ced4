"""The zoo registry: names, errors, converters, set_backend."""

import pytest
import torch

import fastgan.models as models
from fastgan.nn import BatchNormAct2d, SNConv2d

EXPECTED = """dcgan_g dcgan_d cgan_g cgan_d sngan64_g sngan64_d sagan64_g sagan64_d sagan128_g
sagan128_d biggan128_g biggan128_d biggan256_g biggan256_d pix2pix_unet256_g patchgan_d
pixelgan_d multiscale_d cyclegan_resnet6_g cyclegan_resnet9_g srresnet_g srgan_d esrgan_g
esrgan_d sketchygan_g sketchygan_d animegan_d lsgan_d""".split()

UPSTREAM = """biggan128_g biggan128_d sagan64_g sagan64_d pix2pix_unet256_g patchgan_d
cyclegan_resnet9_g srresnet_g esrgan_g""".split()


def test_every_model_of_the_design_is_registered():
    assert sorted(EXPECTED) == [n for n in models.list_models() if n in EXPECTED]
    assert set(models.list_models()) == set(EXPECTED)


def test_upstream_converters_exist():
    assert set(UPSTREAM) <= set(models.upstream_names())


def test_families_partition_the_models():
    families = {models._registry._MODELS[n].family for n in models.list_models()}
    assert sum(len(models.list_models(f)) for f in families) == len(models.list_models())


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'nope'.*dcgan_g"):
        models.create("nope")


def test_convert_upstream_errors():
    with pytest.raises(ValueError, match="no upstream converter for 'dcgan_d'"):
        models.convert_upstream("dcgan_d", {})
    with pytest.raises(TypeError, match="mapping"):
        models.convert_upstream("srresnet_g", [torch.zeros(1)])


def test_set_backend_reaches_every_fused_layer():
    from fastgan.nn import spectral_norm

    hooked = spectral_norm(torch.nn.Conv2d(8, 8, 1), dim=1, backend="cpu")  # the pre-hook form
    model = torch.nn.Sequential(SNConv2d(3, 8, 3, backend="cpu"), BatchNormAct2d(8, backend="cpu"),
                                hooked)
    assert models.set_backend(model, "reference") is model
    hook = next(h for h in hooked._forward_pre_hooks.values() if hasattr(h, "backend"))
    assert (model[0]._sn.backend, model[1].backend, hook.backend) == ("reference",) * 3
