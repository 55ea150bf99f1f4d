"""The data sources, one module per form of data, each a Source (source.Source) of
records it decodes in the graph:

  tfrecords    TFRecord shards of the schema of docs/data.md
  tfds_source  one split of a prepared TFDS dataset
  npz          arrays of an .npz file, read in place
  folders      images and clips in class folders
  arrays       labelled arrays in memory

Which source a data spec names is input_fns.specs' choice.
"""
