# syntax=docker/dockerfile:1
# deepbleed-bids as a BIDS-App container (GPU-capable; runs on the CPU without a GPU).
#
#   docker build -t deepbleed-bids:0.1.0 .                              # with the published weights
#   docker build --build-arg WITH_WEIGHTS=0 -t deepbleed-bids:0.1.0 .   # without them
#   docker build --build-arg WEIGHTS_SHA256=<hex> -t deepbleed-bids:0.1.0 .  # pin the weights
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /data/bids:/bids:ro -v /data/out:/out -v /scratch/work:/work \
#       deepbleed-bids:0.1.0 /bids /out participant --work-dir /work
#
# TensorFlow comes from PyPI as tensorflow[and-cuda]: the CUDA 12 / cuDNN 9 libraries it
# was built against arrive as NVIDIA wheels, so the host needs only an NVIDIA driver and
# the NVIDIA Container Toolkit. (The tensorflow/tensorflow:*-gpu images since 2.18 ship a
# system cuDNN 8.9 older than the one TensorFlow needs, and TensorFlow sees no GPU in them.)
# Every direct dependency is pinned to the versions tested (tests/test_containers.py checks
# the pins against pyproject.toml and Singularity.def); the package itself is installed
# with --no-deps, so pip never resolves a second TensorFlow build (tensorflow-cpu).

# ---- stage 1: the package as a wheel (the final image holds no source tree) ----
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml version README.md LICENSE ./
COPY deepbleed_bids ./deepbleed_bids
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- stage 2: the app ----
FROM python:3.11-slim-bookworm

ARG DEEPBLEED_VERSION=0.1.0
ARG TENSORFLOW_VERSION=2.21.0
# 0: leave the published weights (CC BY-NC-ND 4.0) out of the image
ARG WITH_WEIGHTS=1
# none is published; give one (e.g. from a previous build's SHA256SUMS) to pin the download
ARG WEIGHTS_SHA256=""

LABEL org.opencontainers.image.title="deepbleed-bids" \
      org.opencontainers.image.description="BIDS-App: intracerebral hemorrhage segmentation and volumetry on non-contrast head CT (DeepBleed VNet)" \
      org.opencontainers.image.version="${DEEPBLEED_VERSION}" \
      org.opencontainers.image.source="https://github.com/deepbleed-bids/deepbleed-bids" \
      org.opencontainers.image.licenses="Apache-2.0 AND BSD-2-Clause AND CC-BY-NC-ND-4.0" \
      org.deepbleed-bids.tensorflow.version="${TENSORFLOW_VERSION}" \
      org.deepbleed-bids.weights.included="${WITH_WEIGHTS}" \
      org.deepbleed-bids.weights.sha256="${WEIGHTS_SHA256}" \
      org.deepbleed-bids.weights.license="CC BY-NC-ND 4.0, not for clinical use (DeepBleed, Sharrock et al. 2020)"

ENV PATH=/opt/venv/bin:/opt/venv/lib/python3.11/site-packages/nvidia/cuda_nvcc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEEPBLEED_HOME=/opt/deepbleed/home \
    DEEPBLEED_CONTAINER=docker \
    DEEPBLEED_CONTAINER_TAG=deepbleed-bids:${DEEPBLEED_VERSION} \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Dependencies first (the slow, rarely changing layer).
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir \
      "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" \
      "keras==3.15.1" \
      "numpy==2.3.5" \
      "scipy==1.15.3" \
      "nibabel==5.4.2" \
      "nipype==1.11.0" \
      "pybids==0.22.0" \
      "antspyx==0.6.3" \
      "fslpy==3.29.1" \
      "dcm2niix==1.0.20260724" \
      "pooch==1.9.0" \
      "pandas==3.1.1" \
      "matplotlib==3.11.2" \
      "pydicom==3.0.2" \
      "highdicom==0.28.2" \
      "edt==3.1.2" \
      "connected-components-3d==4.1.1" \
      "bids-validator-deno==3.0.2" \
      "tomli==2.2.1" \
      "tomli-w==1.2.0" \
      "psutil==7.2.2" \
 && python -c "import glob, sysconfig; print('\n'.join(sorted(glob.glob(sysconfig.get_paths()['purelib'] + '/nvidia/*/lib'))))" \
      > /etc/ld.so.conf.d/zz-nvidia-pip.conf \
 && ldconfig

# The package, without dependency resolution, then a consistency check: exactly one
# TensorFlow distribution, at the pinned version, and no broken requirements.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && pip check \
 && python -c "from importlib.metadata import distributions as d; tf = sorted((x.metadata['Name'] or '') for x in d() if (x.metadata['Name'] or '').lower().replace('_', '-') in ('tensorflow', 'tensorflow-cpu', 'tf-nightly', 'tensorflow-intel')); assert tf == ['tensorflow'], tf"

# The template and the example head CT ship inside the package: `fetch template example`
# only checks their sha256. The published weights go into a read-only cache inside the
# image through the app's own downloader (pinned URL; SHA256SUMS records their digest).
# The weights' .license-shown marker is removed so every run prints their license.
RUN deepbleed-bids fetch template example \
 && if [ "${WITH_WEIGHTS}" = "1" ]; then \
      deepbleed-bids fetch weights --weights-sha256 "${WEIGHTS_SHA256}" \
      && find "${DEEPBLEED_HOME}" -name .license-shown -delete \
      && chmod -R a+rX,go-w "${DEEPBLEED_HOME}" \
      && cat "${DEEPBLEED_HOME}/SHA256SUMS"; \
    fi

# Any user may run it (docker run -u UID:GID): nothing is written outside the output and
# work folders, and $HOME may be unwritable. The default is an unprivileged user.
COPY --chmod=0755 run.py /opt/deepbleed-bids/run.py
RUN /opt/deepbleed-bids/run.py --version \
 && useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin deepbleed
USER 1000:1000
WORKDIR /home/deepbleed

ENTRYPOINT ["/opt/deepbleed-bids/run.py"]
CMD ["--help"]
