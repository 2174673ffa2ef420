"""Pip metadata for the boq_ros Python package (the ROS build is CMakeLists.txt + package.xml)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name='boq_ros',
    version='0.1.0',
    description='Visual loop closure with Bag-of-Queries place descriptors for ROS 2',
    long_description=Path(__file__).with_name('README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.10',
    packages=find_packages(include=['boq_ros', 'boq_ros.*']),
    package_data={'boq_ros': ['model/data/*.tsv', 'ros/*.xml']},
    install_requires=[
        'torch>=2.1',
        'torchvision>=0.16',
        'numpy',
        'faiss-cpu',
        'opencv-python-headless',
        'rosbags',
        'pyyaml',
        'tqdm',
        'matplotlib',
        'gtsam',
        'onnx',
        'onnxscript',
        'onnxruntime',
        'openvino',
    ],
    extras_require={'test': ['pytest', 'pytest-timeout', 'ruff', 'pydocstyle'],
                    # fleet scale (docs/fleet.md): the Milvus store, a local Milvus server, Ray
                    'milvus': ['pymilvus', 'milvus-lite'], 'milvus-server': ['milvus'],
                    'ray': ['ray[data]']},
    entry_points={
        'console_scripts': [
            'boq-ros = boq_ros.cli:main',
            'boq-ros-node = boq_ros.ros.node:main',
            'boq-ros-pose-graph = boq_ros.ros.pose_graph_node:main',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Framework :: Robot Framework :: Library',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
)
