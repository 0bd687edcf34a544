"""Installable package for queryvision_mm (an OpenMMLab plugin suite).

Heavy, build-sensitive pins (torch/torchvision pair, mmcv built from source) are installed by
``tools/setup_env.sh`` in the right order; ``install_requires`` only lists what pip can resolve safely.
"""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    reqs = []
    with open(osp.join(HERE, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line and not line.startswith('-'):
                reqs.append(line)
    return reqs


def read_version():
    scope = {}
    with open(osp.join(HERE, 'queryvision_mm', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)  # our own file, not user input
    return scope['__version__']


setup(
    name='queryvision_mm',
    version=read_version(),
    description='Query-based vision papers (Semi-DETR, Sparse Semi-DETR, CQ-DINO, QKS, MaO) as OpenMMLab plugins',
    long_description=open(osp.join(HERE, 'README.md')).read() if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    include_package_data=True,
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'mim': read_requirements('mminstall.txt'),
        'optional': read_requirements('optional.txt'),
        'tests': read_requirements('tests.txt'),
    },
    license='Apache License 2.0',
    zip_safe=False,
)
