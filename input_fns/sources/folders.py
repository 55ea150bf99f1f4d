"""Images and clips in class folders, read as a stream.

Layouts (the kind is told by the layout, the same for every class):
  images  DIR/<class>/<image>           one example per image file
  clips   DIR/<class>/<clip>/<frame>    one example per clip folder, frames in natural
                                        order (frame_2 before frame_10)

Class names are the sorted names of DIR's subfolders; a label is the position of its
class in that list. Only the paths are listed in Python, once; every file is read and
decoded in the graph by `FolderSource.decode`, so an unreadable image is a bad record
for the guard of `Source.examples`, named by its path.
"""

import os
import re

import tensorflow as tf

from estimator_models.errors import UserError, assertion_text
from input_fns import CLIP, IMAGE, preprocess
from input_fns.sources import source

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.gif', '.bmp')
_EXTENSIONS_TEXT = ', '.join(extension[1:] for extension in IMAGE_EXTENSIONS)
# Joins the frame paths of one clip into one string record; split again in the graph.
_FRAME_SEPARATOR = '\n'
_LAYOUTS = f'DIR/<class>/<image> or DIR/<class>/<clip>/<frame> ({_EXTENSIONS_TEXT})'


def open_folder(path, kind=None):
    """The class folders at `path` as (FolderSource, None): a folder has no test split.

    Raises UserError if the folder cannot be used, or holds another kind than `kind`
    (input_fns.IMAGE or CLIP; None accepts either).
    """
    folder = FolderSource(path)
    if kind is not None and folder.info.kind != kind:
        raise UserError(f'{path} holds {folder.info.kind}s but this model reads {kind}s')
    return folder, None


class FolderSource(source.Source):
    """Examples listed from class folders (see the module docstring).

    Attributes:
      info: SourceInfo; frame_shape is None since sizes may vary (first_frame_shape()
        peeks at one image).
      origins: one path per example: the image file, or the clip folder.
      members: per example, the paths to decode: (image,) or the clip's frames in order.
      labels: one class index per example.
    """

    def __init__(self, path):
        kind, class_names, listing = _list_classes(path)
        self.origins, self.members, self.labels = [], [], []
        for label, examples in enumerate(listing):
            for origin, members in examples:
                self.origins.append(origin)
                self.members.append(members)
                self.labels.append(label)
        self.info = source.SourceInfo(
            spec=path, kind=kind, frame_shape=None, num_classes=len(class_names),
            class_names=tuple(class_names), num_examples=len(self.origins))
        self._first_frame_shape = None

    def first_frame_shape(self):
        """(H, W, C) of the first image (or first frame of the first clip), read once.

        Other images may differ; this is for defaults such as a model's input size.
        """
        if self._first_frame_shape is None:
            first = self.members[0][0]
            try:
                image = _decode_file(first, channels=None)
            except (tf.errors.OpError, ValueError) as error:
                raise UserError(f'cannot decode {first}: {_first_line(error)}') from None
            self._first_frame_shape = tuple(int(size) for size in image.shape)
        return self._first_frame_shape

    def records(self, shard, shuffle_seed):
        """(origin, 0, (paths string [], label int64 [])) per example: one file holds one
        record, so the index is always 0 and the origin names the file or clip folder.
        A clip's frame paths are one string joined by newlines."""
        payloads = [_FRAME_SEPARATOR.join(members) for members in self.members]
        records = tf.data.Dataset.from_tensor_slices((
            self.origins, tf.zeros(len(self.origins), tf.int64),
            (payloads, tf.constant(self.labels, tf.int64))))
        if shard.count > 1:
            records = records.shard(shard.count, shard.index)
        if shuffle_seed is not None:
            records = records.shuffle(len(self.origins), seed=shuffle_seed,
                                      reshuffle_each_iteration=True)
        return records

    def decode(self, payload, channels, max_image_pixels=preprocess.DEFAULT_MAX_IMAGE_PIXELS):
        """Reads and decodes the payload's files: image uint8 [h, w, channels], or clip
        frames uint8 [t, h, w, channels] (fails when frame sizes differ, or a file's
        header claims more than `max_image_pixels` pixels)."""
        paths, label = payload
        if self.info.kind == IMAGE:
            return source.image_features(_decode_file(paths, channels, max_image_pixels)), label
        frames = tf.map_fn(lambda path: _decode_file(path, channels, max_image_pixels),
                           tf.strings.split(paths, _FRAME_SEPARATOR),
                           fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8))
        return source.clip_features(frames), label


def _decode_file(path, channels, max_image_pixels=preprocess.DEFAULT_MAX_IMAGE_PIXELS):
    """One image file -> uint8 [h, w, c]; an animated GIF gives its first frame."""
    return preprocess.checked_decode_image(tf.io.read_file(path), channels, max_image_pixels)


def _list_classes(path):
    """(kind, class names, per class a list of (origin, member paths)) of the folder."""
    if not os.path.exists(path):
        raise UserError(f'data folder {path} does not exist')
    if not os.path.isdir(path):
        raise UserError(f'{path} is not a folder: expected {_LAYOUTS}')
    class_names = sorted(entry.name for entry in _visible(path) if entry.is_dir())
    if len(class_names) < 2:
        raise UserError(f'{path} has {len(class_names)} class folder(s); a classifier needs '
                        f'at least two: {_LAYOUTS}')
    kinds, listing = zip(*(_list_class(os.path.join(path, name)) for name in class_names))
    if not any(listing):
        raise UserError(f'{path} holds no images: expected {_LAYOUTS}')
    for name, examples in zip(class_names, listing):
        if not examples:
            raise UserError(f'class folder {os.path.join(path, name)} holds no images '
                            f'({_EXTENSIONS_TEXT})')
    if len(set(kinds)) > 1:
        raise UserError(f'{path} mixes class folders of images and of clips: expected {_LAYOUTS}')
    return kinds[0], class_names, listing


def _list_class(folder):
    """(kind, [(origin, member paths)]) of one class folder: its images, or its clip
    folders; kind is None when it holds neither."""
    entries = _visible(folder)
    images = [entry.path for entry in entries if _is_image(entry)]
    clips = [entry.path for entry in entries if entry.is_dir()]
    if images and clips:
        raise UserError(f'{folder} holds both images and subfolders: expected {_LAYOUTS}')
    if images:
        return IMAGE, [(image, (image,)) for image in images]
    return (CLIP if clips else None), [(clip, _list_frames(clip)) for clip in clips]


def _list_frames(clip):
    frames = tuple(entry.path for entry in _visible(clip) if _is_image(entry))
    if not frames:
        raise UserError(f'clip folder {clip} holds no frames ({_EXTENSIONS_TEXT})')
    return frames


def _visible(folder):
    """The entries of `folder` not hidden, in natural order (so that listings, and the
    order of examples read without shuffling, are the same on every file system)."""
    try:
        with os.scandir(folder) as entries:
            visible = [entry for entry in entries if not entry.name.startswith('.')]
    except OSError as error:
        raise UserError(f'cannot list {folder}: {error.strerror}') from None
    return sorted(visible, key=lambda entry: natural_key(entry.name))


def _is_image(entry):
    return entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS


def natural_key(name):
    """A sort key that orders runs of digits by their value: frame_2 before frame_10.

    The split alternates text and digit runs, starting with text, so keys of any two
    names compare text with text and numbers with numbers.
    """
    parts = re.split(r'([0-9]+)', name)
    return [int(part) if position % 2 else part for position, part in enumerate(parts)], name


def _first_line(error):
    message = getattr(error, 'message', None) or str(error)
    if assertion_text(message):  # e.g. an image refused by preprocess.checked_decode_image
        return assertion_text(message)
    return message.strip().splitlines()[0] if message.strip() else type(error).__name__
