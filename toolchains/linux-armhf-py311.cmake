# CMake toolchain file for 32-bit ARM Linux (Debian armhf: ARMv7-A, hard-float EABI5) on an x86_64 Debian host.
# Used by edgeseg.crossbuild with linux-armhf-py311.toml, which passes the compilers and flags
# (CMAKE_<LANG>_COMPILER, CMAKE_<LANG>_FLAGS) so that the TOML stays their one source.
# Source: CMake's cmake-toolchains(7) manual, "Cross Compiling for Linux".
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7-a)
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf /usr/lib/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
