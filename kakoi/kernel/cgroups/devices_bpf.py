"""Enforce device rules on a cgroup v2 directory with a BPF_PROG_TYPE_CGROUP_DEVICE program.

cgroup v2 has no devices controller. The kernel instead runs the eBPF programs attached
to the cgroup (and its ancestors) at each device open and mknod, with a
`struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor;}` as context, where
access_type is (access bits << 16) | device type. A return value of 0 denies with EPERM.
This module assembles such a program from the rules, loads it with bpf(2) and attaches
it with BPF_F_ALLOW_MULTI, then detaches the programs that were attached before, so an
update replaces the rules. The kernel detaches the programs when the cgroup is removed.

Imported only when device rules are applied on v2, because it loads ctypes.
"""

import ctypes
import os
import struct

from kakoi import log
from kakoi.errors import CgroupError

from .resources import ANY, DeviceRule

# bpf(2) numbers from include/uapi/linux/bpf.h.
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

# Instruction opcodes: class | operation | source.
_LDX_MEM_W = 0x61        # BPF_LDX | BPF_MEM | BPF_W
_ALU64_AND_K = 0x57      # BPF_ALU64 | BPF_AND | BPF_K
_ALU64_RSH_K = 0x77      # BPF_ALU64 | BPF_RSH | BPF_K
_ALU64_MOV_K = 0xB7      # BPF_ALU64 | BPF_MOV | BPF_K
_ALU64_MOV_X = 0xBF      # BPF_ALU64 | BPF_MOV | BPF_X
_JMP_JEQ_K = 0x15        # BPF_JMP | BPF_JEQ | BPF_K
_JMP_JNE_K = 0x55        # BPF_JMP | BPF_JNE | BPF_K
_JMP_EXIT = 0x95         # BPF_JMP | BPF_EXIT

# Registers after the prologue: r2 device type, r3 access bits, r4 major, r5 minor;
# r1 (the context pointer until then) is free for the access test.
_TYPE, _ACCESS, _MAJOR, _MINOR, _SCRATCH = 2, 3, 4, 5, 1

_DEVICE_TYPES = {"b": 1, "c": 2}
_ACCESS_BITS = {"m": 1, "r": 2, "w": 4}
_ALL_ACCESS = 7

# Program logs are kept for the error message when the verifier rejects a program.
_LOG_SIZE = 65536
_ATTR_SIZE = 128


def instruction(code: int, dst: int = 0, src: int = 0, offset: int = 0, imm: int = 0) -> bytes:
    """Encode one struct bpf_insn: opcode, dst and src registers, offset, immediate."""
    return struct.pack("<BBhi", code, (src << 4) | dst, offset, imm)


def assemble(rules: tuple[DeviceRule, ...] | list[DeviceRule]) -> list[bytes]:
    """Return the program's instructions for rules, where the last matching rule wins.

    The program tests the rules from last to first and returns the first match's verdict,
    so it gives the same result as applying the rules in order. A request that no rule
    matches is denied.
    """
    program = [
        instruction(_LDX_MEM_W, _TYPE, 1, 0),
        instruction(_ALU64_AND_K, _TYPE, imm=0xFFFF),
        instruction(_LDX_MEM_W, _ACCESS, 1, 0),
        instruction(_ALU64_RSH_K, _ACCESS, imm=16),
        instruction(_LDX_MEM_W, _MAJOR, 1, 4),
        instruction(_LDX_MEM_W, _MINOR, 1, 8),
    ]
    for rule in reversed(list(rules)):
        program.extend(_rule_block(rule))
        if rule.matches_all:
            # Nothing before a rule that matches every request can change the result.
            return program

    program.append(instruction(_ALU64_MOV_K, 0, imm=0))
    program.append(instruction(_JMP_EXIT))
    return program


def _rule_block(rule: DeviceRule) -> list[bytes]:
    # Each test is a (kind, register, value) step; a failed test jumps past the block.
    tests: list[tuple[int, int, int]] = []
    if rule.type != "a":
        tests.append((_JMP_JNE_K, _TYPE, _DEVICE_TYPES[rule.type]))

    mask = 0
    for letter in rule.access:
        mask |= _ACCESS_BITS[letter]

    body: list[tuple[str, tuple]] = []
    if mask != _ALL_ACCESS:
        body.append(("mov", (_ALU64_MOV_X, _SCRATCH, _ACCESS)))
        if rule.allow:
            # An allow rule matches when the request needs no access outside its letters.
            body.append(("and", (_ALU64_AND_K, _SCRATCH, ~mask & _ALL_ACCESS)))
            body.append(("jump", (_JMP_JNE_K, _SCRATCH, 0)))
        else:
            # A deny rule matches when the request needs any of its letters.
            body.append(("and", (_ALU64_AND_K, _SCRATCH, mask)))
            body.append(("jump", (_JMP_JEQ_K, _SCRATCH, 0)))

    steps: list[tuple[str, tuple]] = [("jump", test) for test in tests] + body
    if rule.major != ANY:
        steps.append(("jump", (_JMP_JNE_K, _MAJOR, rule.major)))
    if rule.minor != ANY:
        steps.append(("jump", (_JMP_JNE_K, _MINOR, rule.minor)))

    block_length = len(steps) + 2
    block = []
    for index, (kind, (code, register, value)) in enumerate(steps):
        if kind == "mov":
            block.append(instruction(code, register, value))
        elif kind == "and":
            block.append(instruction(code, register, imm=value))
        else:
            skip = block_length - index - 1
            block.append(instruction(code, register, offset=skip, imm=value))

    block.append(instruction(_ALU64_MOV_K, 0, imm=1 if rule.allow else 0))
    block.append(instruction(_JMP_EXIT))
    return block


def apply(directory: str, rules) -> None:
    """Load a program for rules and make it the only one kakoi attached to directory.

    Raises:
        CgroupError: bpf(2) failed; the message names the step and the directory.
    """
    program = b"".join(assemble(rules))
    cgroup_fd = _open_directory(directory)
    try:
        previous = _query(cgroup_fd, directory)
        program_fd = _load(program, directory)
        try:
            _attach(cgroup_fd, program_fd, directory)
        finally:
            os.close(program_fd)
        for program_id in previous:
            _detach_by_id(cgroup_fd, program_id, directory)
    finally:
        os.close(cgroup_fd)

    log.debug("attached a device program of %d instructions to %s, replacing %s",
              len(program) // 8, directory, previous, name=__name__)


def _open_directory(directory: str) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"open cgroup {directory} for the device program: "
                          f"{exc.strerror}") from exc


_libc = None


def _bpf(command: int, attr: ctypes.Array) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long

    number = _BPF_SYSCALL.get(os.uname().machine)
    if number is None:
        raise CgroupError(f"device rules on cgroup v2 need bpf(2), whose number kakoi does "
                          f"not know on {os.uname().machine}")

    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(command), attr,
                           ctypes.c_uint(ctypes.sizeof(attr)))
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def _load(program: bytes, directory: str) -> int:
    code = ctypes.create_string_buffer(program, len(program))
    license_text = ctypes.create_string_buffer(b"Apache-2.0")
    log_buffer = ctypes.create_string_buffer(_LOG_SIZE)

    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIQQIIQII16sII", attr, 0,
                     BPF_PROG_TYPE_CGROUP_DEVICE, len(program) // 8,
                     ctypes.addressof(code), ctypes.addressof(license_text),
                     1, _LOG_SIZE, ctypes.addressof(log_buffer),
                     0, 0, b"kakoi_devices", 0, BPF_CGROUP_DEVICE)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        verifier = log_buffer.value.decode(errors="replace").strip().splitlines()
        detail = f" ({verifier[-1]})" if verifier else ""
        raise CgroupError(f"load the device program for {directory}: {exc.strerror}{detail}; "
                          "device rules on cgroup v2 need a kernel with "
                          "CONFIG_CGROUP_BPF") from exc


def _attach(cgroup_fd: int, program_fd: int, directory: str) -> None:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIII", attr, 0, cgroup_fd, program_fd, BPF_CGROUP_DEVICE,
                     BPF_F_ALLOW_MULTI)
    try:
        _bpf(BPF_PROG_ATTACH, attr)
    except OSError as exc:
        raise CgroupError(f"attach the device program to {directory}: {exc.strerror}") from exc


def _query(cgroup_fd: int, directory: str, capacity: int = 64) -> list[int]:
    """Return the ids of the device programs attached to the cgroup itself."""
    ids = (ctypes.c_uint32 * capacity)()
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIIIQI", attr, 0, cgroup_fd, BPF_CGROUP_DEVICE, 0, 0,
                     ctypes.addressof(ids), capacity)
    try:
        _bpf(BPF_PROG_QUERY, attr)
    except OSError as exc:
        raise CgroupError(f"list the device programs of {directory}: {exc.strerror}") from exc

    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:count])


def attached_programs(directory: str) -> list[int]:
    """Return the ids of the device programs attached to the cgroup directory itself."""
    cgroup_fd = _open_directory(directory)
    try:
        return _query(cgroup_fd, directory)
    finally:
        os.close(cgroup_fd)


def _detach_by_id(cgroup_fd: int, program_id: int, directory: str) -> None:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<I", attr, 0, program_id)
    try:
        program_fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CgroupError(f"open device program {program_id} of {directory}: "
                          f"{exc.strerror}") from exc

    try:
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("<III", attr, 0, cgroup_fd, program_fd, BPF_CGROUP_DEVICE)
        _bpf(BPF_PROG_DETACH, attr)
    except OSError as exc:
        raise CgroupError(f"detach device program {program_id} from {directory}: "
                          f"{exc.strerror}") from exc
    finally:
        os.close(program_fd)
