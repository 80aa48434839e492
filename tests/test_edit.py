"""The editing pipeline (`cganjax.editing`) and `python -m cganjax.edit`.

The work directory contains a tiny run's record and a checkpoint of random
weights (`random_params`), which is all that editing needs: the checks are
about geometry, masks, compositing and errors, not about edit quality.
Expected values come from numpy on the input arrays, never from the code
under test.
"""

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import random_params
from conftest import make_tiny_config, run_module
from PIL import Image

from cganjax import edit_images, editing
from cganjax.data import parts, synthetic
from cganjax.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_SIZE = 32


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A work directory with a run record and a random step-0 checkpoint."""
  path = tmp_path_factory.mktemp('run')
  random_params.write_random_run(path, make_tiny_config())
  return path


@pytest.fixture(scope='module')
def editor(workdir):
  return editing.Editor.load(workdir)


def disc_mask(height, width, radius, centre=None) -> np.ndarray:
  cy, cx = centre if centre else ((height - 1) / 2, (width - 1) / 2)
  y, x = np.mgrid[:height, :width]
  return (y - cy) ** 2 + (x - cx) ** 2 <= radius**2


def save_mask(mask: np.ndarray, path: Path) -> Path:
  Image.fromarray(mask.astype(np.uint8) * 255).save(path)
  return path


def read_png(path: Path) -> np.ndarray:
  with Image.open(path) as picture:
    return np.asarray(picture).copy()


def edit_one(editor, tmp_path, image, mask, **options):
  """Edit one file with Smiling=1 and return (output array, report)."""
  out = tmp_path / 'out'
  options.setdefault('sets', ['Smiling=1'])
  editing.edit_files(editor, image, out, mask=str(mask), **options)
  stem = Path(image).stem
  report = json.loads((out / f'{stem}_0.json').read_text())
  return read_png(out / f'{stem}_0.png'), report


def random_rgb(rng, height, width) -> np.ndarray:
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# Image modes: the reference is computed here from the written arrays.


def write_rgb(path, rng):
  rgb = random_rgb(rng, 37, 45)
  Image.fromarray(rgb).save(path)
  return rgb, None


def write_gray(path, rng):
  gray = rng.integers(0, 256, (50, 33), dtype=np.uint8)
  Image.fromarray(gray, mode='L').save(path)
  return np.repeat(gray[..., None], 3, axis=-1), None


def write_palette(path, rng):
  indices = rng.integers(0, 16, (41, 40), dtype=np.uint8)
  palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
  picture = Image.fromarray(indices, mode='P')
  picture.putpalette(palette.reshape(-1).tolist())
  picture.save(path)
  return palette[indices], None


def write_palette_transparency(path, rng):
  indices = rng.integers(0, 8, (38, 42), dtype=np.uint8)
  palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
  picture = Image.fromarray(indices, mode='P')
  picture.putpalette(palette.reshape(-1).tolist())
  picture.save(path, transparency=2)  # Palette index 2 is transparent.
  alpha = np.where(indices == 2, 0, 255).astype(np.uint8)
  return palette[indices], alpha


def write_rgba(path, rng):
  rgba = rng.integers(0, 256, (35, 39, 4), dtype=np.uint8)
  Image.fromarray(rgba, mode='RGBA').save(path)
  return rgba[..., :3], rgba[..., 3]


def write_gray_alpha(path, rng):
  la = rng.integers(0, 256, (34, 40, 2), dtype=np.uint8)
  Image.fromarray(la, mode='LA').save(path)
  return np.repeat(la[..., :1], 3, axis=-1), la[..., 1]


def write_sixteen_bit(path, rng):
  values = rng.integers(0, 65536, (36, 34), dtype=np.uint16)
  Image.fromarray(values).save(path)
  with Image.open(path) as picture:
    assert picture.mode.startswith('I'), picture.mode
  high_byte = (values // 256).astype(np.uint8)
  return np.repeat(high_byte[..., None], 3, axis=-1), None


def png_chunk(kind: bytes, data: bytes) -> bytes:
  checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
  return (
    struct.pack('>I', len(data)) + kind + data + struct.pack('>I', checksum)
  )


def write_sixteen_bit_rgb(path, rng):
  # Pillow cannot write 16-bit RGB, so the PNG is assembled here.
  height, width = 35, 33
  values = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16)
  rows = b''.join(
    b'\0' + values[y].astype('>u2').tobytes() for y in range(height)
  )
  header = struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0)
  path.write_bytes(
    b'\x89PNG\r\n\x1a\n'
    + png_chunk(b'IHDR', header)
    + png_chunk(b'IDAT', zlib.compress(rows))
    + png_chunk(b'IEND', b'')
  )
  return (values // 256).astype(np.uint8), None


def write_cmyk_jpeg(path, rng):
  cmyk = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
  Image.fromarray(cmyk, mode='CMYK').save(path, quality=95)
  with Image.open(path) as picture:
    assert picture.mode == 'CMYK'
    rgb = np.asarray(picture.convert('RGB')).copy()
  return rgb, None


MODES = {
  'rgb.png': write_rgb,
  'gray.png': write_gray,
  'palette.png': write_palette,
  'palette_transparency.png': write_palette_transparency,
  'rgba.png': write_rgba,
  'gray_alpha.png': write_gray_alpha,
  'sixteen_bit.png': write_sixteen_bit,
  'sixteen_bit_rgb.png': write_sixteen_bit_rgb,
  'cmyk.jpg': write_cmyk_jpeg,
}


@pytest.mark.parametrize('name', list(MODES))
def test_hard_mask_keeps_outside_exactly(editor, tmp_path, name):
  rng = np.random.default_rng(len(name))
  image = tmp_path / name
  expected_rgb, expected_alpha = MODES[name](image, rng)
  height, width = expected_rgb.shape[:2]
  mask = disc_mask(height, width, 9)
  mask_path = save_mask(mask, tmp_path / 'mask.png')

  output, report = edit_one(editor, tmp_path, image, mask_path)

  assert output.shape[:2] == (height, width)
  assert output.shape[2] == (3 if expected_alpha is None else 4)
  np.testing.assert_array_equal(output[..., :3][~mask], expected_rgb[~mask])
  if expected_alpha is not None:
    np.testing.assert_array_equal(output[..., 3], expected_alpha)
  assert report['mean_change']['outside'] == 0.0
  assert report['mask']['area_px'] == int(mask.sum())
  assert (report['width'], report['height']) == (width, height)


def test_exif_rotation_gives_upright_output(editor, tmp_path):
  rng = np.random.default_rng(3)
  stored = random_rgb(rng, 36, 48)  # 48 wide, 36 high as stored.
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation 6: rotate 90 degrees clockwise to view.
  image = tmp_path / 'rotated.png'
  Image.fromarray(stored).save(image, exif=exif)
  upright = np.rot90(stored, k=-1)  # Clockwise: 36 wide, 48 high.
  mask = disc_mask(48, 36, 8)
  mask_path = save_mask(mask, tmp_path / 'mask.png')

  output, report = edit_one(editor, tmp_path, image, mask_path)

  assert output.shape == (48, 36, 3)
  np.testing.assert_array_equal(output[~mask], upright[~mask])
  assert report['exif_transposed'] is True


def test_crop_box_is_centred_square(editor, tmp_path):
  rng = np.random.default_rng(4)
  image = tmp_path / 'tall.png'
  Image.fromarray(random_rgb(rng, 71, 40)).save(image)
  mask_path = save_mask(disc_mask(71, 40, 6), tmp_path / 'mask.png')
  _, report = edit_one(editor, tmp_path, image, mask_path)
  # (71 - 40) // 2 = 15 rows above the 40x40 square.
  assert report['crop_box'] == {'top': 15, 'left': 0, 'side': 40}


def test_mask_outside_crop_is_clipped(editor, tmp_path):
  rng = np.random.default_rng(5)
  rgb = random_rgb(rng, 40, 70)
  image = tmp_path / 'wide.png'
  Image.fromarray(rgb).save(image)
  mask = np.zeros((40, 70), bool)
  mask[10:20, 5:30] = True  # The square spans columns 15 to 54.
  mask_path = save_mask(mask, tmp_path / 'mask.png')

  output, report = edit_one(editor, tmp_path, image, mask_path)

  np.testing.assert_array_equal(output[:, :15], rgb[:, :15])
  assert report['mask']['clipped_px'] == 10 * 10
  assert report['mask']['area_px'] == 10 * 15


def brute_force_weights(mask: np.ndarray, width: float) -> np.ndarray:
  inside = np.argwhere(mask)
  outside = np.argwhere(~mask)
  weights = np.zeros(mask.shape)
  for y, x in inside:
    distance = np.sqrt(((outside - [y, x]) ** 2).sum(axis=1)).min()
    weights[y, x] = min(distance / width, 1.0)
  return weights


def test_feather_weights_match_brute_force():
  mask = np.zeros((20, 23), bool)
  mask[3:15, 4:19] = True
  mask[8:12, 2:5] = True
  for width in (1.0, 2.5, 4.0):
    np.testing.assert_allclose(
      edit_images.feather_weights(mask, width),
      brute_force_weights(mask, width),
      atol=1e-6,
    )
  np.testing.assert_array_equal(
    edit_images.feather_weights(mask, 0), mask.astype(np.float32)
  )


def test_feather_blends_only_inside_band(editor, tmp_path):
  rng = np.random.default_rng(6)
  rgb = random_rgb(rng, 41, 43)
  image = tmp_path / 'face.png'
  Image.fromarray(rgb).save(image)
  mask = disc_mask(41, 43, 12)
  mask_path = save_mask(mask, tmp_path / 'mask.png')
  hard, _ = edit_one(editor, tmp_path / 'hard', image, mask_path)
  soft, report = edit_one(
    editor, tmp_path / 'soft', image, mask_path, feather=4.0
  )
  assert report['mask']['feather_px'] == 4.0

  weights = brute_force_weights(mask, 4.0)
  band = (weights > 0) & (weights < 1)
  core = weights == 1
  assert band.any()
  assert core.any()
  np.testing.assert_array_equal(soft[~mask], rgb[~mask])
  np.testing.assert_array_equal(soft[core], hard[core])

  reference = rgb.astype(np.int32)
  edit = hard.astype(np.int32)
  low = np.minimum(reference, edit)[band]
  high = np.maximum(reference, edit)[band]
  assert np.all(soft[band] >= low), 'overshoot below the inputs'
  assert np.all(soft[band] <= high), 'overshoot above the inputs'
  # The hard output is the rounded edit, so the mix is within one level.
  w = weights[band][:, None]
  mix = w * edit[band] + (1 - w) * reference[band]
  assert np.abs(soft[band] - mix).max() <= 1.0


def test_dilation_grows_mask_by_disc(editor, tmp_path):
  rng = np.random.default_rng(7)
  image = tmp_path / 'face.png'
  rgb = random_rgb(rng, 40, 40)
  Image.fromarray(rgb).save(image)
  mask = np.zeros((40, 40), bool)
  mask[20, 20] = True
  mask_path = save_mask(mask, tmp_path / 'mask.png')
  output, report = edit_one(editor, tmp_path, image, mask_path, dilate=3)
  # Integer offsets with dx**2 + dy**2 <= 9: 29 pixels.
  grown = disc_mask(40, 40, 3, centre=(20, 20))
  assert grown.sum() == 29
  assert report['mask']['area_px'] == 29
  np.testing.assert_array_equal(output[~grown], rgb[~grown])


# Masks from part annotations and activation maps.


def synthetic_face(folder: Path, name: str, index: int, size: int = 48):
  example = synthetic.render(11, index, size)
  Image.fromarray(example['image']).save(folder / name)
  return example


def test_part_names_use_label_map(editor, tmp_path):
  example = synthetic_face(tmp_path, 'face.png', 2)
  labels = tmp_path / 'labels.png'
  Image.fromarray(example['parts']).save(labels)
  names = ('mouth', 'u_lip', 'l_lip', 'nose')
  wanted = [parts.PART_NAMES.index(n) + 1 for n in names]
  mask = np.isin(example['parts'], wanted)
  assert mask.any()

  output, report = edit_one(
    editor, tmp_path, tmp_path / 'face.png', ','.join(names), parts=labels
  )

  assert report['mask']['kind'] == 'parts'
  assert report['mask']['area_px'] == int(mask.sum())
  np.testing.assert_array_equal(output[~mask], example['image'][~mask])


def test_folder_mode_pairs_by_name(editor, tmp_path):
  images = tmp_path / 'images'
  annotations = tmp_path / 'parts'
  images.mkdir()
  (annotations / 'sub').mkdir(parents=True)
  faces = {}
  for name, index in (('a.png', 1), ('b.png', 2), ('12.png', 3)):
    faces[name] = synthetic_face(images, name, index)
  (images / 'broken.png').write_bytes(b'not an image')
  # Label maps for a and b; CelebAMask-HQ part files for image 12.
  Image.fromarray(faces['a.png']['parts']).save(annotations / 'a.png')
  Image.fromarray(faces['b.png']['parts']).save(annotations / 'sub/b.png')
  labels_12 = faces['12.png']['parts']
  for part in ('mouth', 'u_lip', 'l_lip', 'hair'):
    part_mask = labels_12 == parts.PART_NAMES.index(part) + 1
    save_mask(part_mask, annotations / 'sub' / f'00012_{part}.png')

  out = tmp_path / 'out'
  summary = editing.edit_files(
    editor,
    images,
    out,
    mask='mouth,u_lip,l_lip',
    parts=str(annotations),
    sets=['Smiling=1'],
  )

  assert summary['outputs'] == ['12_0.png', 'a_0.png', 'b_0.png']
  assert [f['image'] for f in summary['failures']] == [
    str(images / 'broken.png')
  ]
  assert json.loads((out / 'report.json').read_text()) == summary
  lip_labels = [parts.PART_NAMES.index(p) + 1 for p in ('mouth', 'u_lip')]
  lip_labels.append(parts.PART_NAMES.index('l_lip') + 1)
  for name, face in faces.items():
    stem = Path(name).stem
    mask = np.isin(face['parts'], lip_labels)
    report = json.loads((out / f'{stem}_0.json').read_text())
    assert report['mask']['area_px'] == int(mask.sum()), name
    output = read_png(out / f'{stem}_0.png')
    np.testing.assert_array_equal(output[~mask], face['image'][~mask])
  assert not list(out.glob('broken*'))


def test_mask_folder_pairs_by_name(editor, tmp_path):
  images, mask_folder = tmp_path / 'images', tmp_path / 'masks'
  images.mkdir()
  mask_folder.mkdir()
  rng = np.random.default_rng(12)
  masks = {}
  for name, radius in (('a', 5), ('b', 9)):
    rgb = random_rgb(rng, 40, 40)
    Image.fromarray(rgb).save(images / f'{name}.png')
    masks[name] = (rgb, disc_mask(40, 40, radius))
    save_mask(masks[name][1], mask_folder / f'{name}.png')

  out = tmp_path / 'out'
  editing.edit_files(
    editor, images, out, mask=str(mask_folder), sets=['Smiling=1']
  )

  for name, (rgb, mask) in masks.items():
    report = json.loads((out / f'{name}_0.json').read_text())
    assert report['mask']['path'] == str(mask_folder / f'{name}.png')
    assert report['mask']['area_px'] == int(mask.sum())
    output = read_png(out / f'{name}_0.png')
    np.testing.assert_array_equal(output[~mask], rgb[~mask])


def test_activation_map_mask_thresholds_map(editor, tmp_path):
  example = synthetic_face(tmp_path, 'face.png', 4, size=MODEL_SIZE)
  spec = 'map:Smiling@0.4:gradient_x_activation:D/block1'
  output, report = edit_one(editor, tmp_path, tmp_path / 'face.png', spec)

  # At the model size the map is computed on the image itself.
  activation = editor.activation_map(
    example['image'], 'Smiling', 'gradient_x_activation', 'D/block1', 32
  )
  mask = activation >= 0.4
  assert report['mask']['kind'] == 'map'
  assert report['mask']['layer'] == 'D/block1'
  assert report['mask']['area_px'] == int(mask.sum())
  assert 0 < mask.sum() < mask.size
  np.testing.assert_array_equal(output[~mask], example['image'][~mask])
  assert activation.max() == pytest.approx(1.0)


def test_map_defaults_come_from_config(editor):
  config = make_tiny_config()
  config.edit.map_method = 'grad_cam_pp'
  config.edit.map_layer = 'D/block3'
  spec = editing.parse_mask(
    'map:Smiling@0.5', editor.attributes, config, editor.d_taps
  )
  assert (spec.method, spec.layer) == ('grad_cam_pp', 'D/block3')

  # Runs recorded before the config had an edit section.
  config = ml_collections.ConfigDict(make_tiny_config().to_dict())
  del config['edit']
  spec = editing.parse_mask(
    'map:Smiling@0.5', editor.attributes, config, editor.d_taps
  )
  assert (spec.method, spec.layer) == ('grad_cam', 'D/block2')


# Targets.


def test_parse_sets_expands_sweeps():
  attributes = ['Male', 'Smiling', 'Eyeglasses']
  edits = editing.parse_sets(
    ['Smiling=0:2:5', 'Smiling=1,Eyeglasses=0', 'Male=0:1:2,Smiling=-1:1:3'],
    attributes,
  )
  assert edits[:5] == [{'Smiling': v} for v in (0.0, 0.5, 1.0, 1.5, 2.0)]
  assert edits[5] == {'Smiling': 1.0, 'Eyeglasses': 0.0}
  combos = [(e['Male'], e['Smiling']) for e in edits[6:]]
  assert combos == [(m, s) for m in (0.0, 1.0) for s in (-1.0, 0.0, 1.0)]


@pytest.mark.parametrize(
  'text',
  ['Smiling', 'Smiling=x', 'Smiling=0:1', 'Smiling=0:1:0', 'Smiling=inf'],
)
def test_parse_sets_rejects_malformed(text):
  with pytest.raises(InputError, match='--set='):
    editing.parse_sets([text], ['Smiling'])


def test_sweep_writes_one_output_per_value(editor, tmp_path):
  rng = np.random.default_rng(8)
  image = tmp_path / 'face.png'
  Image.fromarray(random_rgb(rng, MODEL_SIZE, MODEL_SIZE)).save(image)
  mask_path = save_mask(disc_mask(32, 32, 7), tmp_path / 'mask.png')
  out = tmp_path / 'out'
  summary = editing.edit_files(
    editor,
    image,
    out,
    mask=str(mask_path),
    sets=['Smiling=0:2:5', 'Blond_Hair=1,Eyeglasses=0'],
  )
  assert summary['outputs'] == [f'face_{k}.png' for k in range(6)]
  values = [
    json.loads((out / f'face_{k}.json').read_text())['attributes']
    for k in range(6)
  ]
  assert [v['Smiling']['value'] for v in values[:5]] == [0, 0.5, 1, 1.5, 2]
  assert all(v['Smiling']['origin'] == 'set' for v in values[:5])
  last = values[5]
  assert last['Blond_Hair'] == {'value': 1.0, 'origin': 'set'}
  assert last['Eyeglasses'] == {'value': 0.0, 'origin': 'set'}
  for other in ('Black_Hair', 'Brown_Hair', 'Gray_Hair'):
    assert last[other] == {'value': 0.0, 'origin': 'exclusive'}


def test_unnamed_attributes_keep_predictions(editor, tmp_path):
  rng = np.random.default_rng(9)
  rgb = random_rgb(rng, MODEL_SIZE, MODEL_SIZE)
  image = tmp_path / 'face.png'
  Image.fromarray(rgb).save(image)
  mask_path = save_mask(disc_mask(32, 32, 7), tmp_path / 'mask.png')
  _, report = edit_one(editor, tmp_path, image, mask_path)

  # The image has the model size, so D's input is the image unchanged.
  x = rgb[None].astype(np.float32) / 127.5 - 1.0
  _, logits = editor.discriminator.apply({'params': editor.d_params}, x)
  probabilities = 1 / (1 + np.exp(-np.asarray(logits[0], np.float64)))
  for i, name in enumerate(editor.attributes):
    before = report['probabilities']['before'][name]
    assert before == pytest.approx(probabilities[i], abs=1e-5), name
    if name == 'Smiling':
      assert report['attributes'][name] == {'value': 1.0, 'origin': 'set'}
    else:
      entry = report['attributes'][name]
      assert entry['origin'] == 'predicted'
      assert entry['value'] == float(probabilities[i] > 0.5), name


# Bad input: an InputError and nothing written.


def write_face(path: Path, size=(40, 40)) -> Path:
  rng = np.random.default_rng(10)
  Image.fromarray(random_rgb(rng, *size)).save(path)
  return path


def truncated_jpeg(path: Path) -> Path:
  rng = np.random.default_rng(11)
  Image.fromarray(random_rgb(rng, 40, 40)).save(path, quality=90)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return path


BAD_INPUTS = {
  'not an image': (
    lambda d: (d / 'x.png').write_bytes(b'plain text') and d / 'x.png',
    lambda d: save_mask(disc_mask(40, 40, 5), d / 'm.png'),
    'cannot read the image',
  ),
  'truncated jpeg': (
    lambda d: truncated_jpeg(d / 'x.jpg'),
    lambda d: save_mask(disc_mask(40, 40, 5), d / 'm.png'),
    'cannot read the image',
  ),
  'mask of another size': (
    lambda d: write_face(d / 'x.png'),
    lambda d: save_mask(disc_mask(40, 41, 5), d / 'm.png'),
    'pass a mask of the image size',
  ),
  'empty mask': (
    lambda d: write_face(d / 'x.png'),
    lambda d: save_mask(np.zeros((40, 40), bool), d / 'm.png'),
    'is empty',
  ),
  'unknown part': (
    lambda d: write_face(d / 'x.png'),
    lambda d: 'mouth,moustache',
    "unknown face parts \\['moustache'\\]",
  ),
  'part names without parts': (
    lambda d: write_face(d / 'x.png'),
    lambda d: 'mouth',
    'need a part annotation',
  ),
  'too small': (
    lambda d: write_face(d / 'x.png', size=(31, 60)),
    lambda d: save_mask(disc_mask(31, 60, 5), d / 'm.png'),
    'minimum 32x32',
  ),
  'bad map threshold': (
    lambda d: write_face(d / 'x.png'),
    lambda d: 'map:Smiling@1.5',
    'threshold',
  ),
  'map of unknown attribute': (
    lambda d: write_face(d / 'x.png'),
    lambda d: 'map:Smiles@0.5',
    "unknown attributes \\['Smiles'\\]",
  ),
}


@pytest.mark.parametrize('case', list(BAD_INPUTS))
def test_bad_input_writes_nothing(editor, tmp_path, case):
  make_image, make_mask, message = BAD_INPUTS[case]
  image = make_image(tmp_path)
  mask = make_mask(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(InputError, match=message) as error:
    editing.edit_files(editor, image, out, mask=str(mask), sets=['Smiling=1'])
  assert '\n' not in str(error.value)
  assert not out.exists()


def test_unknown_attribute_writes_nothing(editor, tmp_path):
  image = write_face(tmp_path / 'x.png')
  mask = save_mask(disc_mask(40, 40, 5), tmp_path / 'm.png')
  with pytest.raises(InputError, match=r"unknown attributes \['Smile'\]"):
    editing.edit_files(
      editor, image, tmp_path / 'out', mask=str(mask), sets=['Smile=1']
    )
  assert not (tmp_path / 'out').exists()


def test_workdir_without_checkpoint_rejected(workdir, tmp_path):
  empty = tmp_path / 'run'
  empty.mkdir()
  shutil.copy(workdir / 'run.json', empty / 'run.json')
  with pytest.raises(InputError, match='no checkpoint found'):
    editing.Editor.load(empty)


def test_unknown_step_rejected(workdir):
  with pytest.raises(InputError, match=r'the saved steps are \[0\]'):
    editing.Editor.load(workdir, step=99)


def test_other_architecture_rejected(workdir, tmp_path):
  other = tmp_path / 'run'
  shutil.copytree(workdir, other)
  record = json.loads((other / 'run.json').read_text())
  record['config']['model']['g_base_channels'] = 16
  (other / 'run.json').write_text(json.dumps(record))
  with pytest.raises(InputError, match='does not match this model'):
    editing.Editor.load(other)


def test_leftover_temporary_checkpoint_ignored(workdir, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  leftover = copy / 'checkpoints' / '4.orbax-checkpoint-tmp-1733000000'
  (leftover / 'state').mkdir(parents=True)
  (leftover / 'state' / 'partial').write_bytes(b'\0' * 64)
  loaded = editing.Editor.load(copy)
  assert loaded.step == 0


# The command line, run as a subprocess with one CPU device.


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
  return run_module('cganjax.edit', *args, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
  assert 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('edit.py: error: '), last
  return last


def test_cli_matches_library_pixels(editor, workdir, tmp_path):
  example = synthetic_face(tmp_path, 'face.png', 5, size=45)
  labels = tmp_path / 'labels.png'
  Image.fromarray(example['parts']).save(labels)
  options = ['--mask=mouth,u_lip,l_lip,nose', f'--parts={labels}']
  result = run_cli(
    f'--workdir={workdir}',
    f'--image={tmp_path / "face.png"}',
    f'--out={tmp_path / "cli"}',
    '--set=Smiling=1.5',
    '--set=Smiling=0,Male=1',
    '--feather=2',
    '--seed=3',
    *options,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ['face_0.png', 'face_1.png']

  results = editor.edit_image(
    tmp_path / 'face.png',
    'mouth,u_lip,l_lip,nose',
    ['Smiling=1.5', 'Smiling=0,Male=1'],
    parts_annotation=str(labels),
    feather=2.0,
    seed=3,
  )
  for k, edit in enumerate(results):
    cli_output = read_png(tmp_path / 'cli' / f'face_{k}.png')
    np.testing.assert_array_equal(cli_output, edit.image)
  strip = read_png(tmp_path / 'cli' / 'face_0_strip.png')
  assert strip.shape == (45, 4 * 45 + 3 * 2, 3)


@pytest.mark.parametrize(
  'options, message',
  [
    (['--mask=mouth', '--set=Smile=1'], 'unknown attributes'),
    (['--mask=mouth', '--set=Smiling=1'], 'need a part annotation'),
    (['--mask=MASK', '--set=Smiling=1', '--image=SMALL'], 'minimum 32x32'),
  ],
)
def test_cli_bad_input_exits_2(workdir, tmp_path, options, message):
  image = write_face(tmp_path / 'x.png')
  small = write_face(tmp_path / 'small.png', size=(20, 40))
  mask = save_mask(disc_mask(40, 40, 5), tmp_path / 'm.png')
  arguments = [f'--workdir={workdir}', f'--out={tmp_path / "out"}']
  if not any(o.startswith('--image') for o in options):
    arguments.append(f'--image={image}')
  for option in options:
    option = option.replace('MASK', str(mask)).replace('SMALL', str(small))
    arguments.append(option)
  result = run_cli(*arguments)
  assert result.returncode == 2, result.stderr
  assert message in error_line(result)
  assert not (tmp_path / 'out').exists()


def test_cli_help_lists_flags():
  result = run_cli('--help', timeout=120)
  assert result.returncode == 0, result.stderr
  for flag in ('--workdir', '--image', '--mask', '--parts', '--set', '--out'):
    assert flag in result.stdout, flag
  assert 'map:ATTR@T' in result.stdout
