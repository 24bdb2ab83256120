# matrix-callbot: runs `callbot run -c /config/config.toml` as an unprivileged user (uid 10001),
# its data in /data (CALLBOT_BOT_DATA_DIR, which wins over the config's data_dir).
#   docker build -t matrix-callbot .
#   docker run -v $PWD/config:/config:ro -v callbot-data:/data matrix-callbot
# A host folder instead of the named volume: run as its owner (or chown it to 10001 once):
#   docker run --user "$(id -u):$(id -g)" -v $PWD/config:/config:ro -v $PWD/data:/data matrix-callbot
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CALLBOT_BOT_DATA_DIR=/data

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
# Says what is wrong with a bind-mounted /data the user cannot write, then runs callbot.
COPY scripts/docker-entrypoint.sh /usr/local/bin/callbot-entrypoint

USER callbot
VOLUME ["/data"]
# /metrics and /health, when [metrics] address = "0.0.0.0:9464"
EXPOSE 9464
ENTRYPOINT ["callbot-entrypoint"]
CMD ["run", "-c", "/config/config.toml"]
