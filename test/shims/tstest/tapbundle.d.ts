export * from '@push.rocks/tapbundle';
