// Cross-thread wake-up cost on this machine: two threads pass a token back and forth through two
// eventfds (each side sleeps in poll until woken), as the proxy's tokio worker and Node's event
// loop do for a function target. Not a test; evidence for bench/RESULTS.md (issue #4).
//
//   gcc -O2 -pthread bench/wakeup-rtt.c -o /tmp/wakeup-rtt && /tmp/wakeup-rtt [gap µs] [spin]
//
// Prints the median and p90 round trip and how often both threads ran on the same CPU. With no
// gap the two threads settle on different vCPUs and each wake-up is an IPI to a halted vCPU; with
// a sleeping gap between round trips the scheduler tends to keep them on one CPU.
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum { N = 3000 };
static int ping_fd, pong_fd;
static volatile int peer_cpu;

static long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void wait_fd(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  uint64_t v;
  poll(&p, 1, -1);
  if (read(fd, &v, 8) != 8) abort();
}

static void post(int fd) {
  uint64_t v = 1;
  if (write(fd, &v, 8) != 8) abort();
}

static void *peer(void *arg) {
  (void)arg;
  for (int i = 0; i < N; i++) {
    wait_fd(ping_fd);
    peer_cpu = sched_getcpu();
    post(pong_fd);
  }
  return NULL;
}

static int cmp(const void *a, const void *b) {
  long x = *(const long *)a, y = *(const long *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int gap_us = argc > 1 ? atoi(argv[1]) : 0;
  int spin = argc > 2;
  static long rtt[N];
  int same = 0;
  pthread_t t;
  ping_fd = eventfd(0, 0);
  pong_fd = eventfd(0, 0);
  pthread_create(&t, NULL, peer, NULL);
  for (int i = 0; i < N; i++) {
    if (gap_us) {
      if (spin) {
        long end = now_ns() + gap_us * 1000L;
        while (now_ns() < end) {
        }
      } else {
        usleep(gap_us);
      }
    }
    long t0 = now_ns();
    post(ping_fd);
    wait_fd(pong_fd);
    rtt[i] = now_ns() - t0;
    same += peer_cpu == sched_getcpu();
  }
  pthread_join(t, NULL);
  qsort(rtt, N, sizeof rtt[0], cmp);
  printf("gap %d us (%s): round trip p50 %.1f us, p90 %.1f us; same CPU %d/%d\n", gap_us, spin ? "spin" : "sleep",
         rtt[N / 2] / 1000.0, rtt[N * 9 / 10] / 1000.0, same, N);
  return 0;
}
