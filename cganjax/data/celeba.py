"""CelebA through tensorflow-datasets (`celeb_a`) from files in data.dir.

The automatic download of `celeb_a` fetches from Google Drive and often
fails, so the builder here is `celeb_a` with its download step replaced by
the files in `data.dir` (`MANUAL_FILES`, from the CelebA page
http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: `Img/img_align_celeba.zip`,
`Anno/*.txt` and `Eval/list_eval_partition.txt`). tensorflow-datasets
prepares its TFRecords once under `<data.prepared_dir>/tfds`. `prepare`
then centre-crops the 178x218 aligned images to 178x178 and resizes them to
`data.image_size`. It writes them to a prepared folder
(`cganjax.data.store`) with a label map drawn from the five landmarks
(`landmark_label_map`).

TensorFlow is imported inside the functions only, with GPUs hidden from it.
"""

from pathlib import Path

import numpy as np
from absl import logging

from cganjax.data import parts, store
from cganjax.errors import InputError

# Keys of the `celeb_a` builder's download request, and the file in data.dir
# that replaces each download.
MANUAL_FILES = {
  'img_align_celeba': 'img_align_celeba.zip',
  'list_eval_partition': 'list_eval_partition.txt',
  'list_attr_celeba': 'list_attr_celeba.txt',
  'landmarks_celeba': 'list_landmarks_align_celeba.txt',
  'identity_celeba': 'identity_CelebA.txt',
}
TFDS_FOLDER = 'tfds'

# Sizes of the landmark regions, as fractions of the distance between the
# eye centres. They are estimates for aligned CelebA faces, chosen to cover
# the eye, the nose tip and the lips without reaching the brows or chin.
_EYE_HALF_WIDTH = 0.28
_EYE_HALF_HEIGHT = 0.16
_NOSE_RADIUS = 0.22
_MOUTH_MARGIN = 0.12  # Added beyond each mouth corner.
_MOUTH_HALF_HEIGHT = 0.24


def check_manual_files(source_dir: str) -> Path:
  """Raise InputError unless every file of `MANUAL_FILES` is in data.dir."""
  names = ', '.join(MANUAL_FILES.values())
  hint = (
    'download them from http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html '
    '(Img/, Anno/ and Eval/) into one folder and set --config.data.dir to it'
  )
  if not source_dir:
    raise InputError(f'data.dir is empty; CelebA needs {names}: {hint}.')
  folder = Path(source_dir).expanduser()
  missing = [
    name for name in MANUAL_FILES.values() if not (folder / name).is_file()
  ]
  if missing:
    expected = '' if len(missing) == len(MANUAL_FILES) else f' of {names}'
    raise InputError(
      f'CelebA files not found in data.dir={folder}: missing '
      f'{", ".join(missing)}{expected}; {hint}.'
    )
  return folder


def _ellipse_mask(size, centre, half_axes, angle) -> np.ndarray:
  """Bool [size, size] mask of pixel centres inside a rotated ellipse."""
  coords = np.arange(size) + 0.5
  dy = coords[:, None] - centre[1]
  dx = coords[None, :] - centre[0]
  cos, sin = np.cos(angle), np.sin(angle)
  along = dx * cos + dy * sin
  across = -dx * sin + dy * cos
  return (along / half_axes[0]) ** 2 + (across / half_axes[1]) ** 2 <= 1.0


def landmark_label_map(landmarks: np.ndarray, size: int) -> np.ndarray:
  """Draw a uint8 [size, size] label map from five landmarks.

  `landmarks` is [5, 2] (x, y) in output pixels: left eye, right eye, nose,
  left and right mouth corner, with "left" the image's left as in CelebA's
  `lefteye_x`. Each eye is an ellipse along the line between the eyes, the
  nose a disc, and the mouth an ellipse spanning the two corners. Pixels
  outside them are background (0), so only attributes whose region lies in
  eyes, nose or mouth get part masks on CelebA.
  """
  landmarks = np.asarray(landmarks, np.float64)
  left_eye, right_eye, nose, left_mouth, right_mouth = landmarks
  eye_axis = right_eye - left_eye
  eye_distance = max(float(np.hypot(*eye_axis)), 1.0)
  eye_angle = float(np.arctan2(eye_axis[1], eye_axis[0]))

  label_map = np.zeros((size, size), np.uint8)
  nose_mask = _ellipse_mask(size, nose, (_NOSE_RADIUS * eye_distance,) * 2, 0.0)
  label_map[nose_mask] = parts.part_label('nose')
  eye_axes = (_EYE_HALF_WIDTH * eye_distance, _EYE_HALF_HEIGHT * eye_distance)
  for name, centre in (('l_eye', left_eye), ('r_eye', right_eye)):
    eye = _ellipse_mask(size, centre, eye_axes, eye_angle)
    label_map[eye] = parts.part_label(name)

  mouth_axis = right_mouth - left_mouth
  mouth_width = float(np.hypot(*mouth_axis))
  mouth_angle = float(np.arctan2(mouth_axis[1], mouth_axis[0]))
  mouth_axes = (
    mouth_width / 2 + _MOUTH_MARGIN * eye_distance,
    _MOUTH_HALF_HEIGHT * eye_distance,
  )
  mouth = _ellipse_mask(
    size, (left_mouth + right_mouth) / 2, mouth_axes, mouth_angle
  )
  label_map[mouth] = parts.part_label('mouth')
  return label_map


def transform_landmarks(landmarks, width: int, height: int, size: int):
  """Map [5, 2] landmarks from a WxH image to the cropped, resized one."""
  left, top, right, _ = store.centre_crop_box(width, height)
  scale = size / (right - left)
  offset = np.array([left, top], np.float64)
  return (np.asarray(landmarks, np.float64) - offset) * scale


_LANDMARK_NAMES = ('lefteye', 'righteye', 'nose', 'leftmouth', 'rightmouth')


def example_arrays(example: dict, size: int):
  """Convert one numpy `celeb_a` example to (image, label map, attributes)."""
  image = np.asarray(example['image'], np.uint8)
  height, width = image.shape[:2]
  points = np.array(
    [
      [example['landmarks'][f'{name}_x'], example['landmarks'][f'{name}_y']]
      for name in _LANDMARK_NAMES
    ],
    np.float64,
  )
  points = transform_landmarks(points, width, height, size)
  attributes = np.array(
    [bool(example['attributes'][name]) for name in parts.CELEBA_ATTRIBUTES],
    np.uint8,
  )
  return (
    store.crop_and_resize(image, size),
    landmark_label_map(points, size),
    attributes,
  )


def _import_tfds():
  """Import tensorflow-datasets with TensorFlow kept off every GPU."""
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise InputError(
      f'CelebA needs TensorFlow and tensorflow-datasets ({error}); install '
      "them with pip install 'tensorflow-cpu>=2.21' "
      "'tensorflow-datasets>=4.9.10'."
    ) from None
  tf.config.set_visible_devices([], 'GPU')
  return tfds


_BUILDER_CLASS = None


def builder_class():
  """Return the `celeb_a` builder whose downloads are files in data.dir.

  It keeps the name `celeb_a`, so its prepared TFRecords sit under
  `<tfds dir>/celeb_a/<version>`, and is not registered, so it does not
  replace the library's own builder.
  """
  global _BUILDER_CLASS
  if _BUILDER_CLASS is not None:
    return _BUILDER_CLASS
  tfds = _import_tfds()
  from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder

  class ManualFiles:
    """A download manager whose downloads are the files in the manual dir."""

    def __init__(self, manager):
      self._manager = manager

    def download(self, resources):
      folder = Path(self._manager.manual_dir)
      return {key: folder / MANUAL_FILES[key] for key in resources}

    def __getattr__(self, name):
      return getattr(self._manager, name)

  class CelebAManual(celeb_a_dataset_builder.Builder, skip_registration=True):
    name = 'celeb_a'
    # The library's `celeb_a` module, so its metadata files are found. Left
    # to the default, tensorflow-datasets 4.9.10 derives the path of a
    # builder outside its package through `importlib_resources`, a package
    # it declares only for Python < 3.9, and fails on Python 3.11.
    code_path = Path(celeb_a_dataset_builder.__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place {", ".join(MANUAL_FILES.values())} in the manual folder.'
    )

    def _split_generators(self, dl_manager):
      return super()._split_generators(ManualFiles(dl_manager))

  del tfds
  _BUILDER_CLASS = CelebAManual
  return _BUILDER_CLASS


def prepare(source_dir: str, prepared_dir: str, folder: Path, size: int):
  """Prepare CelebA at `size` into `folder` through tensorflow-datasets.

  The `train` split trains and the `test` split is held out; `validation`
  is not used.
  """
  source = check_manual_files(source_dir)
  tfds = _import_tfds()
  builder = builder_class()(
    data_dir=str(Path(prepared_dir).expanduser() / TFDS_FOLDER)
  )
  logging.info('Preparing celeb_a with tensorflow-datasets from %s.', source)
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(source))
    )
  except (KeyError, IndexError, ValueError) as error:
    # The builder indexes the images and the rows of the .txt files by file
    # name, so a file listed in one but missing from another fails here.
    raise InputError(
      f'tensorflow-datasets could not prepare celeb_a from {source} '
      f'({type(error).__name__}: {error}); check that every image in '
      'list_eval_partition.txt is in img_align_celeba.zip and has a row in '
      'the other .txt files.'
    ) from None
  writer = store.StoreWriter(
    folder,
    size,
    parts.CELEBA_ATTRIBUTES,
    {'data': 'celeba', 'source': str(source.resolve())},
  )
  try:
    for split in store.SPLITS:
      dataset = builder.as_dataset(split=split, shuffle_files=False)
      for number, example in enumerate(tfds.as_numpy(dataset)):
        image, label_map, attributes = example_arrays(example, size)
        writer.add(split, f'{split}/{number}', image, label_map, attributes)
  except BaseException:
    writer.abort()
    raise
  return writer.finish([])
