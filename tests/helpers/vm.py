# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A throwaway Debian VM under QEMU (TCG) for tests that need nbd, systemd as PID 1 or reboots.

Two releases: bookworm (Debian 12) and trixie (Debian 13), on amd64, and trixie on arm64 for a smoke run. The
base image of each comes from ``tests/vm/build-image.sh RELEASE [--arch ARCH]`` (see docs/testing-vm.md). Every
``TestVM`` boots a fresh qcow2 overlay over it, so nothing a test does survives ``close()``::

    with TestVM('trixie') as vm:
        vm.run('modprobe nbd max_part=8', check=True)
        vm.reboot()
        subprocess.run(['ansible', '-i', vm.inventory(), 'testvm', '-m', 'ansible.builtin.ping'], check=True)

The guest runs with ``-no-reboot``: a reboot inside the guest (``systemctl reboot``, ansible.builtin.reboot)
makes qemu exit, and a supervisor thread starts qemu again on the same overlay. That takes ~15 s, against
~60 s for a reboot that qemu handles itself under TCG.

Contributors' CLI (run as root from the repo root; --release trixie for Debian 13, --arch arm64 for arm64)::

    python tests/helpers/vm.py shell          boot a VM, open a root shell in it, throw it away on exit
    python tests/helpers/vm.py run CMD...     boot, run one command, print its output, throw the VM away
    python tests/helpers/vm.py up             boot and keep it up (prints ssh command and inventory) until Ctrl-C

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_SCRIPT = os.path.join(REPO, 'tests', 'vm', 'build-image.sh')
DEFAULT_CACHE = '/var/cache/containerhost-overlayfs-vm'
RELEASES = ('bookworm', 'trixie')  # Debian 12 and 13: what build-image.sh builds


class Machine(NamedTuple):
    """What a guest's architecture decides: the qemu that emulates it, its machine options and the serial console's
    device. The CPU, which the image's build emulates too, is in the image (its cpu file, see build-image.sh)."""
    qemu: str
    options: tuple
    console: str


# Every guest CPU is emulated (TCG).
MACHINES = {
    'amd64': Machine('qemu-system-x86_64', (), 'ttyS0'),
    'arm64': Machine('qemu-system-aarch64', ('-machine', 'virt'), 'ttyAMA0'),
}
ARCHES = tuple(MACHINES)  # build-image.sh --arch; amd64 (the first) is the default

SSH_OPTIONS = (
    '-o', 'BatchMode=yes',
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'LogLevel=ERROR',
    '-o', 'IdentitiesOnly=yes',
    '-o', 'ConnectTimeout=10',
    '-o', 'ServerAliveInterval=10',
    '-o', 'ServerAliveCountMax=6',
)

KERNEL_CMDLINE = 'root=/dev/vda rw console=%s net.ifnames=0 panic=1'
# What the guest kernel prints on the serial console just before qemu (-no-reboot) exits: a clean reboot,
# or a reset without one (sysrq 'b', what reset() uses).
RESTART_MARKERS = ('reboot: Restarting system', 'sysrq: Resetting')
PANIC_MARKER = 'Kernel panic - not syncing'


class VMError(RuntimeError):
    """The VM did not boot, did not answer on SSH, or qemu died."""


class VMCommandError(subprocess.CalledProcessError):
    """A command in the guest failed; unlike CalledProcessError, str() shows its output."""

    def __str__(self):
        text = 'command in the VM exited with %s: %s' % (self.returncode, self.cmd)
        for name, value in (('stdout', self.stdout), ('stderr', self.stderr)):
            if value:
                text += '\n--- %s ---\n%s' % (name, value.rstrip()[-4000:])
        return text


def cache_dir():
    """The image cache directory (``OVERLAYFS_VM_CACHE`` or the default)."""
    return os.environ.get('OVERLAYFS_VM_CACHE') or DEFAULT_CACHE


def image_dir(release, arch=ARCHES[0]):
    """Where build-image.sh puts the complete image of a release (amd64's under the release's name)."""
    return os.path.join(cache_dir(), release if arch == ARCHES[0] else '%s-%s' % (release, arch), 'image')


def ensure_image(release, arch=ARCHES[0]):
    """Run build-image.sh: builds the release's base image unless the cached one matches the recipe.
    Returns its dir."""
    cmd = ['bash', BUILD_SCRIPT, release, '--arch', arch]
    subprocess.run(cmd, check=True)
    return image_dir(release, arch)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TestVM:
    """One throwaway VM: qcow2 overlay over the cached base image, booted with qemu -kernel/-initrd.

    Use it as a context manager, or call ``start()`` and ``close()`` (close also runs at interpreter exit).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, release='bookworm', memory=2048, cpus=1, boot_timeout=300, keep_workdir=None, arch=ARCHES[0]):
        if release not in RELEASES:
            raise VMError('unknown release %r (known: %s)' % (release, ', '.join(RELEASES)))
        if arch not in MACHINES:
            raise VMError('unknown architecture %r (known: %s)' % (arch, ', '.join(ARCHES)))
        self.release = release
        self.machine = MACHINES[arch]
        self.image_dir = image_dir(release, arch)
        self.base_image = os.path.join(self.image_dir, 'base.img')
        self.kernel = os.path.join(self.image_dir, 'vmlinuz')
        self.initrd = os.path.join(self.image_dir, 'initrd.img')
        self.key = os.path.join(self.image_dir, 'id_ed25519')
        cpu = os.path.join(self.image_dir, 'cpu')
        for path in (self.base_image, self.kernel, self.initrd, self.key, cpu):
            if not os.path.exists(path):
                raise VMError('%s is missing: build the image first (bash %s %s --arch %s, or make vm-image)'
                              % (path, BUILD_SCRIPT, release, arch))
        with open(cpu) as handle:
            self.cpu = handle.read().strip()
        self.memory = memory
        self.cpus = cpus
        # Longer than the slowest mount unit's job timeout at boot (up to 2 min 40 s on a loaded machine): systemd
        # starts sshd only after local-fs.target, and a boot that is slow but sound must not fail the test.
        self.boot_timeout = boot_timeout
        if keep_workdir is None:
            keep_workdir = os.environ.get('OVERLAYFS_VM_KEEP_WORKDIR', '') not in ('', '0')
        self.keep_workdir = keep_workdir
        self.host = '127.0.0.1'
        self.user = 'root'
        self.port = None
        self.workdir = None
        self.overlay = None
        self.console_log = None
        self.qemu_log = None
        self.boots = 0  # how many times qemu has been started
        self.boot_seconds = []  # qemu start -> SSH answers, per boot that was waited for
        self.reboot_seconds = []  # reboot() calls: `systemctl reboot` -> SSH answers again
        self._proc = None
        self._thread = None
        self._cond = threading.Condition()
        self._closing = False
        self._dead = None  # why qemu is gone for good
        self._boot_started = None
        self._console_offset = 0
        self._pinned = []

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info):
        self.close()

    def start(self):
        """Create the overlay, boot qemu and wait until SSH answers."""
        if self._thread is not None:
            raise VMError('already started')
        runs = os.path.join(cache_dir(), 'runs')
        os.makedirs(runs, exist_ok=True)
        self._remove_stale_runs(runs)
        # ssh binds its control socket (_multiplexing) at WORKDIR/ssh plus 17 bytes; a socket's path has at most 107.
        if len(os.path.join(runs, 'vm-12345678', 'ssh')) + 17 > 107:
            raise VMError('%s is too deep for the ssh control socket: set OVERLAYFS_VM_CACHE to a shorter dir' % runs)
        self.workdir = tempfile.mkdtemp(prefix='vm-', dir=runs)
        with open(os.path.join(self.workdir, 'owner.pid'), 'w') as f:
            f.write('%d\n' % os.getpid())
        self._pin_image()
        self.overlay = os.path.join(self.workdir, 'overlay.qcow2')
        self.console_log = os.path.join(self.workdir, 'console.log')
        self.qemu_log = os.path.join(self.workdir, 'qemu.log')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', os.path.abspath(self.base_image),
                        '-F', 'raw', self.overlay], check=True)
        self.port = free_port()
        _register(self)
        # qemu is started (and restarted after guest reboots) by one supervisor thread, so that the
        # parent-death signal is tied to a thread that lives exactly as long as the VM.
        self._thread = threading.Thread(target=self._supervise, name='testvm-qemu', daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self.boots > 0 or self._dead is not None, timeout=30)
        self.wait_for_ssh()

    def _pin_image(self):
        """Hard-link base image, kernel and initrd into the work dir (same filesystem): a rebuild of the image
        while this VM runs replaces image/ but cannot change the files this VM's overlay and restarts use."""
        for attr in ('base_image', 'kernel', 'initrd'):
            source = getattr(self, attr)
            link = os.path.join(self.workdir, os.path.basename(source))
            try:
                os.link(source, link)
            except OSError:
                continue  # another filesystem: use the cached files in place
            setattr(self, attr, link)
            self._pinned.append(link)

    def close(self):
        """Kill qemu, remove the overlay (and the work dir unless keep_workdir). Safe to call twice."""
        with self._cond:
            self._closing = True
            proc = self._proc
            self._cond.notify_all()
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if self.workdir and os.path.isdir(self.workdir):
            if self.keep_workdir:
                for path in [self.overlay] + self._pinned:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                sys.stderr.write('testvm: kept %s (console.log, qemu.log)\n' % self.workdir)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        _unregister(self)

    @staticmethod
    def _remove_stale_runs(runs):
        """Work dirs of VMs whose Python process is gone (killed before close() ran)."""
        for name in os.listdir(runs):
            path = os.path.join(runs, name)
            try:
                with open(os.path.join(path, 'owner.pid')) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if not _pid_alive(pid):
                shutil.rmtree(path, ignore_errors=True)

    # -- qemu --------------------------------------------------------------------------------------------

    def qemu_command(self):
        return [self.machine.qemu] + list(self.machine.options) + [
            '-name', 'overlayfs-testvm-%s' % self.release,
            '-accel', 'tcg,thread=multi', '-cpu', self.cpu, '-smp', str(self.cpus), '-m', str(self.memory),
            '-nodefaults', '-display', 'none', '-no-reboot',
            '-kernel', self.kernel, '-initrd', self.initrd, '-append', KERNEL_CMDLINE % self.machine.console,
            '-drive', 'file=%s,format=qcow2,if=virtio,cache=unsafe,discard=unmap' % self.overlay,
            '-netdev', 'user,id=net0,hostfwd=tcp:%s:%d-:22' % (self.host, self.port),
            '-device', 'virtio-net-pci,netdev=net0',
            '-device', 'virtio-rng-pci',
            '-chardev', 'file,id=console,path=%s,append=on' % self.console_log,
            '-serial', 'chardev:console',
        ]

    def _spawn(self):
        """Start one qemu; caller holds self._cond."""
        with open(self.console_log, 'a') as f:
            f.write('\n===== testvm: qemu start #%d at %s =====\n' % (self.boots + 1, time.strftime('%H:%M:%S')))
            self._console_offset = f.tell()
        cmd = self.qemu_command()
        if shutil.which('setpriv'):
            # qemu gets SIGKILL when the thread that started it ends, even if this process is killed
            # before close() runs: no orphaned qemu.
            cmd = ['setpriv', '--pdeathsig', 'KILL', '--'] + cmd
        with open(self.qemu_log, 'a') as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,  # pylint: disable=consider-using-with
                                          stderr=subprocess.STDOUT)
        self._boot_started = time.monotonic()
        self.boots += 1
        self._cond.notify_all()

    def _supervise(self):
        with self._cond:
            if self._closing:
                return
            try:
                self._spawn()
            except OSError as e:
                self._dead = 'qemu could not be started: %s' % e
                self._cond.notify_all()
                return
        while True:
            proc = self._proc
            returncode = proc.wait()
            with self._cond:
                if self._closing:
                    return
                output = self._console_since_boot()
                if returncode == 0 and any(marker in output for marker in RESTART_MARKERS) \
                        and PANIC_MARKER not in output:
                    self._spawn()  # the guest rebooted: same overlay, same port
                    continue
                if PANIC_MARKER in output:
                    why = 'the guest kernel panicked'
                elif returncode == 0:
                    why = 'the guest powered off'
                else:
                    why = 'qemu exited with status %s' % returncode
                self._dead = why
                self._cond.notify_all()
                return

    def _console_since_boot(self):
        try:
            with open(self.console_log, 'rb') as f:
                f.seek(self._console_offset)
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def console_tail(self, lines=40):
        """The last lines of the serial console log (all boots) and of qemu's own output."""
        parts = []
        for name, path in (('console', self.console_log), ('qemu', self.qemu_log)):
            if not path or not os.path.exists(path):
                continue
            with open(path, 'rb') as f:
                text = f.read().decode('utf-8', 'replace').replace('\r', '')
            tail = [line for line in text.splitlines() if line.strip()][-lines:]
            if tail:
                parts.append('--- %s (%s), last %d lines ---\n%s' % (name, path, len(tail), '\n'.join(tail)))
        return '\n'.join(parts) or '(no console output)'

    @property
    def running(self):
        """qemu is running now (False for a moment while a guest reboot restarts it)."""
        return self._proc is not None and self._proc.poll() is None and self._dead is None

    @property
    def dead(self):
        """None while the VM lives (restarts included); else why qemu is gone for good."""
        return self._dead

    # -- SSH -----------------------------------------------------------------------------------------------

    def _multiplexing(self):
        """ssh options that carry every command over one connection, which the first one opens: a new connection
        costs the emulated guest about 2 s (key exchange, sshd's start), a session on an open one about 0.1 s. The
        connection ends with qemu (a reboot, a reset, close())."""
        return ['-o', 'ControlMaster=auto', '-o', 'ControlPersist=60',
                '-o', 'ControlPath=' + os.path.join(self.workdir, 'ssh')]

    def ssh_command(self, *args):
        """argv for ssh to the guest; args are appended (a remote command, or nothing for a shell)."""
        destination = ['-i', self.key, '-p', str(self.port), '%s@%s' % (self.user, self.host)]
        return ['ssh'] + list(SSH_OPTIONS) + self._multiplexing() + destination + list(args)

    def wait_for_ssh(self, timeout=None):
        """Wait until `ssh true` works; raise VMError with the console tail when it does not in time."""
        timeout = self.boot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self._dead is not None:
                raise VMError('%s before SSH answered\n%s' % (self._dead, self.console_tail()))
            try:
                probe = subprocess.run(self.ssh_command('true'), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, timeout=30, check=False)
            except subprocess.TimeoutExpired as e:
                probe = subprocess.CompletedProcess(e.cmd, 255, None, b'ssh timed out')
            if probe.returncode == 0:
                if self._boot_started is not None:
                    self.boot_seconds.append(round(time.monotonic() - self._boot_started, 1))
                    self._boot_started = None
                return
            if time.monotonic() > deadline:
                raise VMError('SSH on %s:%s did not answer within %d s (last ssh error: %s)\n%s'
                              % (self.host, self.port, timeout, probe.stderr.decode(errors='replace').strip(),
                                 self.console_tail()))
            time.sleep(1)

    def run(self, cmd, check=False, timeout=600, input=None):  # pylint: disable=redefined-builtin
        """Run a shell command line (str) or argv (list, quoted for the remote shell) as root in the guest.

        Returns a CompletedProcess with text stdout/stderr; check=True raises VMCommandError on failure.
        """
        if not isinstance(cmd, str):
            cmd = shlex.join(cmd)
        result = subprocess.run(self.ssh_command('--', cmd), input=input, capture_output=True, text=True,
                                timeout=timeout, check=False, stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise VMCommandError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def _scp(self, sources, dest):
        cmd = (['scp', '-q', '-r'] + list(SSH_OPTIONS) + self._multiplexing() + ['-i', self.key, '-P', str(self.port)]
               + sources + [dest])
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, timeout=600)

    def copy_to(self, local, remote):
        """Copy a file or directory from the host to a path in the guest (scp -r)."""
        self._scp([local], '%s@%s:%s' % (self.user, self.host, remote))

    def copy_from(self, remote, local):
        """Copy a file or directory from the guest to the host (scp -r)."""
        self._scp(['%s@%s:%s' % (self.user, self.host, remote)], local)

    def boot_id(self):
        return self.run('cat /proc/sys/kernel/random/boot_id', check=True).stdout.strip()

    def reboot(self, timeout=240):
        """Reboot the guest and wait for SSH again; returns the new boot id.

        With -no-reboot the guest's reboot ends qemu; the supervisor thread starts it again on the same overlay.
        """
        before = self.boot_id()
        started = time.monotonic()
        with self._cond:
            boots = self.boots
        # Returns once the reboot job is queued; the SSH session may be cut as sshd stops.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run('systemctl reboot', timeout=60)
        with self._cond:
            if not self._cond.wait_for(lambda: self.boots > boots or self._dead is not None, timeout=timeout):
                raise VMError('the guest did not restart within %d s after systemctl reboot\n%s'
                              % (timeout, self.console_tail()))
        self.wait_for_ssh()
        self.reboot_seconds.append(round(time.monotonic() - started, 1))
        after = self.boot_id()
        if after == before:
            raise VMError('boot id unchanged after reboot (%s)' % after)
        return after

    def reset(self, timeout=240):
        """Reset the guest without a clean shutdown (sysrq 'b': no sync, no unmount, like pressing reset) and
        wait for SSH again; returns the new boot id."""
        before = self.boot_id()
        with self._cond:
            boots = self.boots
        # In the background, a second later, so that this SSH session has ended cleanly when the guest goes.
        self.run("echo 1 > /proc/sys/kernel/sysrq; setsid -f sh -c 'sleep 1; echo b > /proc/sysrq-trigger' "
                 ">/dev/null 2>&1 </dev/null", check=True, timeout=60)
        with self._cond:
            if not self._cond.wait_for(lambda: self.boots > boots or self._dead is not None, timeout=timeout):
                raise VMError('the guest did not restart within %d s after the reset\n%s'
                              % (timeout, self.console_tail()))
        self.wait_for_ssh()
        after = self.boot_id()
        if after == before:
            raise VMError('boot id unchanged after reset (%s)' % after)
        return after

    # -- Ansible -----------------------------------------------------------------------------------------

    def inventory(self, path=None):
        """Write an Ansible inventory (YAML, host `testvm`) for this VM; returns its path."""
        path = path or os.path.join(self.workdir, 'inventory.yml')
        host = {
            'ansible_host': self.host,
            'ansible_port': self.port,
            'ansible_user': self.user,
            'ansible_ssh_private_key_file': self.key,
            'ansible_python_interpreter': '/usr/bin/python3',
            'ansible_ssh_common_args': shlex.join(SSH_OPTIONS),
            'ansible_pipelining': True,
        }
        with open(path, 'w') as f:
            # JSON is YAML: no YAML library needed, and no quoting surprises.
            json.dump({'all': {'hosts': {'testvm': host}}}, f, indent=2)
            f.write('\n')
        return path


# close() at interpreter exit for VMs that were not closed (qemu also dies with its supervisor thread).
_LIVE = set()
_LIVE_LOCK = threading.Lock()


def run_role(vm, workdir, variables, run_name):
    """One ansible-playbook run of the overlay_mounts role on ``vm`` with these variables (written to
    ``workdir``/``run_name``.json); the completed process. Packages are in the image: the role installs none."""
    vars_file = os.path.join(workdir, run_name + '.json')
    with open(vars_file, 'w') as handle:
        json.dump(dict({'overlay_mounts_install_packages': False}, **variables), handle)
    playbook = os.path.join(workdir, 'role.yml')
    with open(playbook, 'w') as handle:
        handle.write('- hosts: testvm\n  gather_facts: false\n  roles:\n    - containerhost.overlayfs.overlay_mounts\n')
    return ansible_playbook(vm, playbook, vars_file)


def ansible_playbook(vm, playbook_path, vars_path):
    """One ansible-playbook run against ``vm`` with the variables of a JSON file; the completed process."""
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_HOST_KEY_CHECKING='False')
    return subprocess.run(['ansible-playbook', '-i', vm.inventory(), '-e', '@' + vars_path, playbook_path],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)


def recap(stdout):
    """{'ok': n, 'changed': n, 'failed': n, ...} of the play's one host."""
    line = [line for line in stdout.splitlines() if line.startswith('testvm ')][-1]
    return dict((key, int(value)) for key, value in (field.split('=') for field in line.split()[2:]))


def _register(vm):
    with _LIVE_LOCK:
        _LIVE.add(vm)


def _unregister(vm):
    with _LIVE_LOCK:
        _LIVE.discard(vm)


def _close_all():
    with _LIVE_LOCK:
        vms = list(_LIVE)
    for vm in vms:
        vm.close()


def _install_exit_handlers():
    import atexit  # pylint: disable=import-outside-toplevel
    atexit.register(_close_all)


_install_exit_handlers()


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python tests/helpers/vm.py', description=__doc__.split('\n', 1)[0])
    parser.add_argument('--no-build', action='store_true', help='do not run build-image.sh first')
    parser.add_argument('--keep-workdir', action='store_true', help='keep console.log and qemu.log after exit')
    parser.add_argument('--release', choices=RELEASES, default=RELEASES[0], help='the Debian release to boot')
    parser.add_argument('--arch', choices=ARCHES, default=ARCHES[0], help="the guest's architecture")
    sub = parser.add_subparsers(dest='action', required=True)
    sub.add_parser('shell', help='boot a VM and open a root shell in it; the VM is thrown away on exit')
    run_parser = sub.add_parser('run', help='boot a VM, run one command in it, throw the VM away')
    run_parser.add_argument('command', nargs=argparse.REMAINDER, help='command and its arguments')
    sub.add_parser('up', help='boot a VM and keep it until Ctrl-C (prints the ssh command and inventory)')
    sub.add_parser('build', help='only build the image (if the cache is not current)')
    args = parser.parse_args(argv)

    if not args.no_build or args.action == 'build':
        ensure_image(args.release, arch=args.arch)
    if args.action == 'build':
        return 0
    started = time.monotonic()
    with TestVM(args.release, keep_workdir=args.keep_workdir or None, arch=args.arch) as vm:
        sys.stderr.write('testvm: SSH up after %.1f s (port %d, console log %s)\n'
                         % (time.monotonic() - started, vm.port, vm.console_log))
        if args.action == 'shell':
            return subprocess.run(vm.ssh_command(), check=False).returncode
        if args.action == 'run':
            return subprocess.run(vm.ssh_command('--', shlex.join(args.command)), check=False).returncode
        print('ssh:       %s' % shlex.join(vm.ssh_command()))
        print('inventory: %s' % vm.inventory())
        print('console:   %s' % vm.console_log)
        print('Ctrl-C to stop and throw the VM away.', flush=True)
        try:
            while vm.dead is None:
                time.sleep(1)
            sys.stderr.write('testvm: %s\n' % vm.dead)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
