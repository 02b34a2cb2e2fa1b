"""The `local` dialect's edits and variations: real images derived from the input, mask rules, determinism."""

import io

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from imagegw.dialects.local import _open, render, render_edit, render_variation

SIZE = (64, 64)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _solid(colour, size=SIZE) -> bytes:
    return _png(Image.new("RGB", size, colour))


def _scene(size=SIZE) -> Image.Image:
    """A structured input: white left half, black right half, a grey square, so every region has content."""
    image = Image.new("RGB", size, "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill="white")
    draw.rectangle((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), fill=(120, 90, 60))
    return image


def _half_mask(size) -> bytes:
    """RGBA mask: alpha 0 on the left half (edit there), 255 on the right half (keep)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=(0, 0, 0, 0))
    return _png(mask)


def _mean(image: Image.Image) -> list[float]:
    return ImageStat.Stat(image).mean


def _mean_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(_mean(ImageChops.difference(a, b))) / 3


def _differing_share(a: Image.Image, b: Image.Image) -> float:
    differs = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v else 0)
    return _mean(differs)[0] / 255


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_edit_is_at_the_requested_size_and_format(fmt, pil):
    out = render_edit([_png(_scene((50, 30)))], None, "a boat", 1, 0, (96, 40), fmt)
    image = Image.open(io.BytesIO(out))
    assert image.format == pil and image.size == (96, 40)
    image.load()  # decodes


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_variation_is_at_the_requested_size_and_format(fmt, pil):
    out = render_variation(_png(_scene()), 3, 1, (40, 72), fmt)
    image = Image.open(io.BytesIO(out))
    assert image.format == pil and image.size == (40, 72)
    image.load()


def test_inputs_in_jpeg_and_webp_are_read():
    for pil in ("JPEG", "WEBP"):
        out = io.BytesIO()
        _scene((80, 80)).save(out, pil)
        edited = _decode(render_edit([out.getvalue()], None, "p", 1, 0, SIZE, "png"))
        varied = _decode(render_variation(out.getvalue(), 1, 0, SIZE, "png"))
        assert edited.size == varied.size == SIZE


def test_mask_keeps_opaque_pixels_and_edits_transparent_ones():
    scene = _scene()
    edited = _decode(render_edit([_png(scene)], _half_mask(SIZE), "a red fox", 7, 0, SIZE, "png"))
    right, left = (32, 0, 64, 64), (0, 0, 32, 64)
    assert ImageChops.difference(edited.crop(right), scene.crop(right)).getbbox() is None  # kept exactly
    assert _differing_share(edited.crop(left), scene.crop(left)) > 0.9
    assert _mean_diff(edited.crop(left), scene.crop(left)) > 20


def test_input_and_mask_are_stretched_to_the_output_size():
    # A 32x32 input with a 100x100 mask (gpt-image: the mask is resized to the first image), output 64x64.
    scene = _scene((32, 32))
    edited = _decode(render_edit([_png(scene)], _half_mask((100, 100)), "p", 1, 0, SIZE, "png"))
    expected = scene.resize(SIZE, Image.Resampling.LANCZOS)
    right, left = (36, 0, 64, 64), (0, 0, 28, 64)  # away from the mask's blurred edge at x = 32
    assert ImageChops.difference(edited.crop(right), expected.crop(right)).getbbox() is None
    assert _differing_share(edited.crop(left), expected.crop(left)) > 0.9


def test_a_fully_opaque_mask_keeps_everything_and_a_mask_without_alpha_counts_as_opaque():
    scene = _png(_scene())
    opaque = _png(Image.new("RGBA", SIZE, (0, 0, 0, 255)))
    no_alpha = _png(Image.new("RGB", SIZE, "black"))
    for mask in (opaque, no_alpha):
        assert ImageChops.difference(_decode(render_edit([scene], mask, "p", 1, 0, SIZE, "png")),
                                     _scene()).getbbox() is None


def test_without_a_mask_the_whole_image_is_edited_but_stays_derived_from_the_input():
    scene = _scene()
    edited = _decode(render_edit([_png(scene)], None, "a lighthouse", 5, 0, SIZE, "png"))
    fresh = _decode(render("a lighthouse", 5, 0, SIZE))
    assert _differing_share(edited, scene) > 0.95
    # Closer to the input than a fresh image of the same prompt is, and the input's bright left half shows.
    assert _mean_diff(edited, scene) < _mean_diff(fresh, scene)
    left, right = (0, 0, 32, 64), (32, 0, 64, 64)
    brightness = [sum(_mean(edited.crop(box))) / 3 - sum(_mean(fresh.crop(box))) / 3 for box in (left, right)]
    assert brightness[0] - brightness[1] > 60


def test_edit_mean_colour_moves_toward_the_input():
    # The edited image is 40% input, 60% the pattern a fresh `render` of the same prompt draws.
    fresh = _mean(_decode(render("meadow", 2, 0, SIZE)))
    for colour in ((230, 20, 20), (20, 20, 230)):
        edited = _mean(_decode(render_edit([_solid(colour)], None, "meadow", 2, 0, SIZE, "png")))
        assert all(abs(e - (0.4 * c + 0.6 * f)) < 1.5 for e, c, f in zip(edited, colour, fresh))
        assert sum(abs(e - c) for e, c in zip(edited, colour)) < sum(abs(f - c) for f, c in zip(fresh, colour))


def test_further_images_tint_the_edit():
    base = _solid((128, 128, 128))
    plain = _mean(_decode(render_edit([base], None, "p", 1, 0, SIZE, "png")))
    tinted = _mean(_decode(render_edit([base, _solid((0, 255, 0))], None, "p", 1, 0, SIZE, "png")))
    assert tinted[1] - plain[1] > 20


def test_edits_are_deterministic_and_depend_on_every_input():
    scene, mask = _png(_scene()), _half_mask(SIZE)
    one = render_edit([scene], mask, "p", 1, 0, SIZE, "png")
    assert one == render_edit([scene], mask, "p", 1, 0, SIZE, "png")
    others = [render_edit([scene], mask, "q", 1, 0, SIZE, "png"), render_edit([scene], mask, "p", 2, 0, SIZE, "png"),
              render_edit([scene], mask, "p", 1, 1, SIZE, "png"), render_edit([scene], None, "p", 1, 0, SIZE, "png"),
              render_edit([_solid("blue")], mask, "p", 1, 0, SIZE, "png")]
    assert len({one, *others}) == 6


def test_variations_differ_per_index_and_are_deterministic():
    scene = _png(_scene())
    outs = [render_variation(scene, 9, i, SIZE, "png") for i in range(4)]
    assert len(set(outs)) == 4
    assert outs == [render_variation(scene, 9, i, SIZE, "png") for i in range(4)]
    assert render_variation(scene, None, 0, SIZE, "png") == render_variation(scene, None, 0, SIZE, "png")
    assert render_variation(scene, 8, 0, SIZE, "png") != outs[0]
    for a in outs:
        for b in outs:
            if a is not b:
                assert _mean_diff(_decode(a), _decode(b)) > 1  # visibly, not just a byte apart


@pytest.mark.parametrize("colour, channel", [((220, 30, 30), 0), ((30, 30, 220), 2), ((30, 200, 30), 1)])
def test_variations_keep_the_input_colour(colour, channel):
    for i in range(6):
        mean = _mean(_decode(render_variation(_solid(colour), 1, i, SIZE, "png")))
        assert mean[channel] == max(mean) and mean[channel] > min(mean) + 60


def test_variations_keep_the_input_structure():
    # The input is half white, half black: whether mirrored or not, one side stays much brighter than the other.
    for i in range(6):
        varied = _decode(render_variation(_png(_scene()), 4, i, SIZE, "png")).convert("L")
        left, right = _mean(varied.crop((0, 0, 16, 64)))[0], _mean(varied.crop((48, 0, 64, 64)))[0]
        assert abs(left - right) > 100


def test_large_jpeg_inputs_are_decoded_reduced():
    out = io.BytesIO()
    _scene((2048, 2048)).save(out, "JPEG")
    assert _open(out.getvalue(), SIZE).size == (256, 256)  # DCT scaling 1/8, never the full 2048x2048
    edited = _decode(render_edit([out.getvalue()], None, "p", 1, 0, SIZE, "png"))
    varied = _decode(render_variation(out.getvalue(), 1, 0, SIZE, "png"))
    assert edited.size == varied.size == SIZE


def test_inputs_are_turned_upright_by_their_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left: displayed rotated 90 degrees clockwise
    out = io.BytesIO()
    _scene((64, 32)).save(out, "PNG", exif=exif)
    opaque = _png(Image.new("RGBA", (32, 64), (0, 0, 0, 255)))
    kept = _decode(render_edit([out.getvalue()], opaque, "p", 1, 0, (32, 64), "png"))
    assert ImageChops.difference(kept, _scene((64, 32)).transpose(Image.Transpose.ROTATE_270)).getbbox() is None


def test_transparent_inputs_are_flattened_onto_white():
    clear = _png(Image.new("RGBA", SIZE, (0, 0, 0, 0)))
    white = _solid("white")
    assert render_edit([clear], None, "p", 1, 0, SIZE, "png") == render_edit([white], None, "p", 1, 0, SIZE, "png")


def test_an_edit_needs_an_image():
    with pytest.raises(ValueError):
        render_edit([], None, "p", 1, 0, SIZE, "png")
