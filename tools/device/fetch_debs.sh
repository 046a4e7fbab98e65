#!/usr/bin/env bash
# Downloads (here, on a Debian 12 machine with apt) the libraries uma's build needs into .debs/ (ignored by
# git), for tools/device/build_and_test.sh to unpack on the GPU machine, which has no package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .debs && cd .debs
apt-get download \
  libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev libgtest-dev \
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libhwy-dev libhwy1 \
  libcurl4-openssl-dev libcurl4 libssl-dev libssl3 \
  libbrotli1 libcom-err2 libdb5.3 libffi8 libgmp10 libgnutls30 libgssapi-krb5-2 libhogweed6 libidn2-0 \
  libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 libnettle8 libnghttp2-14 libp11-kit0 \
  libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev zlib1g-dev \
  libpsl5 librtmp1 libsasl2-2 libsasl2-modules-db libssh2-1 libtasn1-6 libunistring2 libzstd1 zlib1g
