"""Recurrent models over images and video as TensorFlow 1-style Estimators."""

import setuptools

# Exact pins: tf.estimator exists only up to TensorFlow 2.15, and pip would otherwise
# move any of these past it. Why each pin is what it is: BUILD_NOTES.md.
# requirements.txt freezes the whole resolved set (with the transitive packages).
# TensorFlow itself is an extra, [cpu] or [gpu]: its CPU and CUDA builds are two
# packages that cannot be installed together.
INSTALL_REQUIRES = [
    'tensorflow-estimator==2.15.0',
    'keras==2.15.0',
    'tensorboard==2.15.2',
    'tensorboard-plugin-profile==2.15.0',
    'numpy==1.26.4',
    # 4.25 has a compiled implementation for Python 3.11; 3.20.3 only a pure-Python one there.
    'protobuf==4.25.8',
    'tensorflow-datasets==4.9.4',
    'tensorflow-metadata==1.15.0',
    # tensorflow-serving-api 2.15.1 is not listed: it asks for the `tensorflow` package,
    # which would bring the CUDA build beside tensorflow-cpu. Install it with
    # `pip install --no-deps -r requirements-no-deps.txt` (make does).
    'absl-py==1.4.0',
    # ONNX export, verification and serving (bin/export --format=onnx).
    'tf2onnx==1.17.0',
    'onnx==1.17.0',
    'onnxruntime==1.32.0',
]

setuptools.setup(
    name='estimator-lstm-pipeline',
    version='0.1.0',
    description=__doc__,
    packages=setuptools.find_packages(include=['estimator_models', 'estimator_models.*', 'input_fns', 'input_fns.*']),
    # The fused LSTM kernel is compiled from its source on the machine that runs it.
    package_data={'estimator_models.layers.kernels': ['*.cc']},
    python_requires='>=3.11,<3.12',
    install_requires=INSTALL_REQUIRES,
    extras_require={'cpu': ['tensorflow-cpu==2.15.1'], 'gpu': ['tensorflow[and-cuda]==2.15.1'],
                    'test': ['pytest==9.2.0', 'pytest-xdist==3.8.0']},
    scripts=['bin/train', 'bin/evaluate', 'bin/export', 'bin/predict', 'bin/benchmark',
             'bin/make_tfrecords', 'bin/convert_checkpoint'],
    entry_points={
        'console_scripts': [
            'lstm-train=estimator_models.running.launch:main_train',
            'lstm-evaluate=estimator_models.running.launch:main_evaluate',
            'lstm-export=estimator_models.running.launch:main_export',
            'lstm-predict=estimator_models.running.launch:main_predict',
            'lstm-benchmark=estimator_models.running.launch:main_benchmark',
            'lstm-make-tfrecords=estimator_models.running.launch:main_make_tfrecords',
            'lstm-convert-checkpoint=estimator_models.running.launch:main_convert_checkpoint',
            'lstm-launch-local-cluster=estimator_models.running.launch:main_launch_local_cluster',
        ],
    },
)
