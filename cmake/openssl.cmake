# SHA-256 for verified model downloads (src/runtime/download.cpp) comes from OpenSSL's libcrypto.
# Include after add_library(uma_core).
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
target_link_libraries(uma_core PUBLIC OpenSSL::Crypto)
