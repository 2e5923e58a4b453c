"""audiosep_jax: probabilistic audio source separation with deep generative priors."""
import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "numpy>=2.4,<2.5",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "tensorboardX==2.6.5",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "matplotlib==3.11.2",
]

EXTRAS_REQUIRE = {
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "fast-bss-eval==0.1.4"],
    "chorales": ["music21==10.5.1", "pretty-midi==0.2.11.post0", "pyfluidsynth==1.4.0"],
    "bench": ["torch==2.13.0"],
    "cuda12": ["jax[cuda12]==0.10.2"],
    "tpu": ["jax[tpu]==0.10.2"],
}

setuptools.setup(
    name="audiosep_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["audiosep_jax", "audiosep_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
