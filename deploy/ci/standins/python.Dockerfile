# Stand-in for python:3.11-slim-bookworm when no image registry is reachable: Debian's Python 3.11
# and pip, answering to `python` and `pip` and installing into /usr/local like the official image.
ARG BASE=localhost/debian:bookworm-slim
FROM ${BASE}
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip
ENV LANG=C.UTF-8
CMD ["python3"]
