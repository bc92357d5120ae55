from setuptools import find_namespace_packages, setup


setup(
    name="vift",
    version="0.1.0",
    description="ViFT (visual instruction-free fine-tuning) for vision-language models, native to the Hugging Face stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Only the library is installed; recipes/, hub/ and benchmarks/ are run from a checkout (python -m ...).
    # modeling_vift/remote_code is a namespace package (no __init__.py): it holds only the files that ship with the weights.
    packages=find_namespace_packages(include=["modeling_vift", "modeling_vift.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17.0,<5.25.0",  # = remote_code/configuration_vift.py SUPPORTED_TRANSFORMERS, the range CI proves
        "trl>=1.0,<2",
        "peft>=0.17",
        "accelerate>=1.10",
        "datasets>=4.0",
        "huggingface-hub>=1.0",
        "ijson>=3.6",  # streams the authors' JSON files (publishing.dataset); C backend in its wheels
        "evaluate>=0.4.5",
        "pillow>=10.0",
        "pyyaml>=6.0",
        "tokenizers>=0.22",
        "tqdm>=4.66",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "sympy>=1.12",  # MATH-V's official value comparison (already pulled in by torch)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3"],
        "lint": ["ruff>=0.6"],
        # ZeRO-2/3 (recipes/accelerate/zero*.yaml). Built from its sdist (no wheel on PyPI; no CUDA needed, ops are
        # compiled on first use). Install it in the same command as the pinned torch, or it pulls a CUDA build.
        "deepspeed": ["deepspeed>=0.19.8"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
