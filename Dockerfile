# matrix-callbot: runs `callbot run -c /config/config.toml` as an unprivileged user.
#   docker build -t matrix-callbot .
#   docker run -v $PWD/config:/config:ro -v callbot-data:/data matrix-callbot
# In config.toml set bot.data_dir = "/data".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --create-home --uid 10001 callbot \
    && mkdir -p /data /config \
    && chown callbot:callbot /data \
    && chmod 0700 /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY plugins ./plugins
# [all]: the transcriber's speech-to-text and the dev SFU; `pip install .` alone is the bot
# with the recorder and the music player (add [ytdlp] for video-site pages in !play).
RUN pip install '.[all]'

USER callbot
VOLUME ["/data"]
# /metrics and /health, when [metrics] address = "0.0.0.0:9464"
EXPOSE 9464
ENTRYPOINT ["callbot"]
CMD ["run", "-c", "/config/config.toml"]
