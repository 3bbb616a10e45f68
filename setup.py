"""Packaging for jobworker: the library, the twistd plugin and the console scripts."""

from setuptools import find_packages, setup

setup(
    name="jobworker",
    version="0.1.0",
    description="Run Linux processes for remote, authenticated clients",
    python_requires=">=3.11",
    packages=[*find_packages(include=["jobworker", "jobworker.*"]), "twisted.plugins"],
    package_data={"jobworker": ["py.typed", "v1/*.pyi"], "twisted.plugins": []},
    include_package_data=False,
    install_requires=[
        "twisted[tls]",
        "automat",
        "grpcio",
        "grpcio-health-checking",
        "grpcio-reflection",
        "protobuf",
        "pyopenssl",
        "service-identity",
        "cryptography",
        "prometheus-client",
    ],
    entry_points={
        "console_scripts": [
            "jobworker = jobworker.cli.main:main",
            "jobworker-pki = jobworker.pki.cli:main",
        ]
    },
    zip_safe=False,
)
